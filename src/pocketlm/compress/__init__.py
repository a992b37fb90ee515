"""Shrinking a model: quantization (quantize.py); distillation and pruning plug into the same verbs."""
