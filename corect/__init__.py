"""corect: emotion recognition in conversation with CORECT and fusion baselines."""

__version__ = "0.1.0"
