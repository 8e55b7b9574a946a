"""Remote OpenAI-compatible upstreams through litellm (not implemented yet)."""
