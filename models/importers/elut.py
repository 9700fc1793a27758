"""edgelut's own model file as an importer: the packed weights, dequantised to float32.

This lets every float consumer (the numpy reference forward in
tools/perplexity.py, re-quantisation, the tests) read a quantised model file,
so a file's perplexity can be measured independently of the C++ engine.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgelut.models.config import ImportedModel
from edgelut.models.importers import Importer, register_importer
from edgelut.models.importers.gguf import is_edgelut_model_file

ELUT_SUFFIX = ".elut"


@register_importer("elut")
class EdgelutImporter(Importer):
    @classmethod
    def can_load(cls, path: Path) -> bool:
        if not path.is_file():
            return False
        return path.suffix.lower() == ELUT_SUFFIX or is_edgelut_model_file(path)

    def load(self, path: Path) -> ImportedModel:
        from edgelut.models.modelfile import read_model_file

        f = read_model_file(path)
        if f.shard.world_size > 1:
            raise ValueError(
                f"{path}: is shard {f.shard.rank + 1} of {f.shard.world_size}, not a whole model"
            )
        tensors: dict[str, np.ndarray] = {}
        for name in f.names():
            t = f.tensor(name)
            w = t.dequantize() if hasattr(t, "dequantize") else t
            tensors[name] = np.ascontiguousarray(w, dtype=np.float32)
        return ImportedModel(config=f.config, tensors=tensors, tokenizer=f.tokenizer, source=str(path))
