"""oodml: a benchmark harness for deep metric learning under out-of-distribution class shift."""

__version__ = "0.1.0"
