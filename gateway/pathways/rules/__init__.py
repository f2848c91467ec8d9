"""The pathways' rules: the rule file schema (pathways/ holds one file per locality), routing, clocks, episode
operations."""
