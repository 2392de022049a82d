"""mlpbench: the "PyTorch I: MLPs" lesson as a reproducible benchmark and report."""

__version__ = "0.1.0"
