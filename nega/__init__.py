"""nega: align and distill language models by learning from negatives."""

__version__ = "0.1.0"
