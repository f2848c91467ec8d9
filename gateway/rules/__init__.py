"""Routing rules: versioned rule files per service (data) and the engine that applies them."""
