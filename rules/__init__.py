"""Booking-aware rules: pure decisions over a snapshot of state and the time."""
