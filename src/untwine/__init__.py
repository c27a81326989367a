"""untwine: disentangled representation learning that is correct, fast and complete."""

__version__ = "0.1.0"
