"""The library version, written into merge cards."""

__version__ = "0.1.0"
