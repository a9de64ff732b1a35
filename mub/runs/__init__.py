"""A run of the benchmark: the runner, its folder on disk, data-parallel launches, shard merging and ``results.json``.

Data flow: dataset -> :mod:`mub.protocol` prompts -> :mod:`mub.backends` -> parsed
answers -> :mod:`mub.runs.predictions` -> :mod:`mub_metric` -> :mod:`mub.runs.results`.
"""
