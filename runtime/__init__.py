"""What runs a compiled program. Knows nothing of the graph IR, so a saved program runs with
only this package and its own dependencies installed."""
