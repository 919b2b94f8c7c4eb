"""Project-wide constants."""

IGNORE_INDEX = -100
"""Label value that means "no loss on this position" (PyTorch's cross-entropy default)."""
