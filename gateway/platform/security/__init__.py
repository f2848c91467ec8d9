"""Who may call the gateway, and for what: client systems, credentials, scopes per route (default-deny)."""
