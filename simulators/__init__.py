"""Simulated devices that speak the real protocols, for demos and tests."""
