"""Architectures, importers (GGUF, Hugging Face, ONNX) and the model file."""
