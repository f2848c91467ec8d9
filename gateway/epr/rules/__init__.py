"""HL7 v2 sender profiles: their schema (senders/ holds one file per sending system)."""
