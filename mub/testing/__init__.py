"""Stand-ins for tests and dry runs: tiny random vision-language models (``tiny:<arch>``) and a scripted backend."""
