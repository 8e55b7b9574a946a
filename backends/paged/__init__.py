"""The production backend: a paged-KV, continuously batching inference engine.

Import what you need from the submodules: `config` (EngineConfig, torch-free), `engine` (LLMEngine, the
synchronous core), `backend` (PagedBackend, the gateway's view). This package imports nothing itself, so
the gateway can validate an `engine:` mapping without loading torch.
"""
