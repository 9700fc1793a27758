"""edgelut: low-bit LLM inference on edge CPUs with lookup-table kernels."""

from edgelut import kernels
from edgelut._core import FileAccessError, ModelFileError
from edgelut.model import GenerationStats, Model, load

__all__ = ["FileAccessError", "GenerationStats", "Model", "ModelFileError", "kernels", "load"]
__version__ = "0.1.0"
