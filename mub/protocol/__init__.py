"""MUB's protocol as pure functions: prompts, two-stage bookkeeping (which cue after which stage-1 outcome) and answer parsing."""
