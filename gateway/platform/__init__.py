"""The shared platform: store, security, audit, inbound messages and re-sends, settings, clock, logging, metrics."""
