"""edgelut: low-bit LLM inference on edge CPUs with lookup-table kernels."""

from edgelut import kernels
from edgelut._core import FileAccessError, ModelFileError, PeerError
from edgelut.distributed.options import DistributedOptions
from edgelut.model import GenerationStats, Model, load

__all__ = [
    "DistributedOptions",
    "FileAccessError",
    "GenerationStats",
    "Model",
    "ModelFileError",
    "PeerError",
    "kernels",
    "load",
]
__version__ = "0.1.0"
