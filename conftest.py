"""Tests run Triton kernels on the CPU interpreter: the flag must be set before any kernel import."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")
