"""The package version (a leaf module: run ids hash it)."""

__version__ = "0.1.0"
