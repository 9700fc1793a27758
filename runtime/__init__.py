"""edgelut: low-bit LLM inference on edge CPUs with lookup-table kernels."""

from edgelut import kernels

__all__ = ["kernels"]
__version__ = "0.1.0"
