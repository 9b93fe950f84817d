"""Admin API and console."""
