"""CompositionCap regional-captioning tasks (AARC, RDC, global)."""
