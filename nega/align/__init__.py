"""Alignment methods that learn from negatives: D²O and per-step negative RL."""
