"""The dev backend: GGUF models in-process on llama.cpp."""

from backends.base import BackendCapabilities

# here, not only on the backend class, so the gateway knows them before a model loads (Ollama's /api/show)
CAPABILITIES = BackendCapabilities(
    logprobs=True, logit_bias=True, ignore_eos=True, min_tokens=True, structured_output=True, embeddings=True
)
