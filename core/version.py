"""The library's version, in one place (``mmassist.core.__version__``; written into manifests)."""

__version__ = "0.1.0"
