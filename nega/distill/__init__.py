"""Distillation methods that learn from negatives: QCRD."""
