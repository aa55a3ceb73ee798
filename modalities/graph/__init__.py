"""Graph adapter: torch-geometric graphs as node tokens (see adapter.py)."""
