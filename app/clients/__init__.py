"""The only modules that speak to third parties: one per service."""
