"""CREME model-editing service: the domain core (no HTTP)."""
