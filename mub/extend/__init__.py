"""Growing and reusing MUB: note generation, importing other datasets as releases, and fine-tuning exports."""
