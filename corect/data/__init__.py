"""Data: the on-disk format, batching, and the embedded synthetic dataset."""
