"""Letters and their outbound delivery: letters.py (request a letter, in the caller's transaction), store.py (the
durable outbox table), worker.py (claim, send, record; acknowledgements), routing.py, consent.py, transports."""
