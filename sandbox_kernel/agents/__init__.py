"""The in-sandbox agents (one per language) and their protocol, PROTOCOL.md."""
