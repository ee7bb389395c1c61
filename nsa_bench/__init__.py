"""nsa-bench: benchmark and profiling suite for Native Sparse Attention (see README.md)."""
from nsa_kernels.config import NSAConfig

__all__ = ["NSAConfig"]
__version__ = "0.1.0"
