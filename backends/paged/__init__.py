"""The production backend: a paged-KV, continuously batching inference engine.

Import what you need from the submodules: `config` (EngineConfig, torch-free), `engine` (LLMEngine, the
synchronous core), `backend` (PagedBackend, the gateway's view). This package imports nothing heavy
itself, so the gateway can validate an `engine:` mapping without loading torch.
"""

from backends.base import BackendCapabilities

# here, not only on the backend class, so the gateway knows them before a model loads (Ollama's /api/show)
CAPABILITIES = BackendCapabilities(
    logprobs=True, logit_bias=True, ignore_eos=True, min_tokens=True, structured_output=True
)
