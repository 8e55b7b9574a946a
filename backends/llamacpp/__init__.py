"""The dev backend: GGUF models in-process on llama.cpp."""
