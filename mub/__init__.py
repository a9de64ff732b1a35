"""mub: run the MUB response-uncertainty benchmark on vision-language models."""

__version__ = "0.1.0"
