"""litelm-edge: a tiny language model from data to a measured deployment on edge devices."""
__version__ = "0.1.0"
