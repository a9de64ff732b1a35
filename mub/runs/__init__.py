"""Running MUB: the runner, the run folder, data-parallel launches, merging shards, results."""
