"""The CAS queue's rules: the rule file schema (services/ holds one file per service), intake, queue state,
operations."""
