"""Model backends behind the gateway: llamacpp (dev), paged (prod), remote (upstream servers)."""
