"""Tool calls in a model's output: per-family incremental parsers, and the choice of parser by template."""
