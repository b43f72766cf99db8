"""Noise schedules: continuous log-SNR families and discrete transition families (pure functions)."""
