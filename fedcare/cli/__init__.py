"""Command-line interface (wiring only)."""
