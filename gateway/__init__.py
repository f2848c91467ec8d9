"""The IAP gateway: FastAPI app, routing rules engine, store, CLI."""
