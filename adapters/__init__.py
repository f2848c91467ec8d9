"""Source adapters: bytes from one source system -> a typed source model. No FHIR output, no database."""
