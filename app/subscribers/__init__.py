"""Subscribers: one per contact, with opt-in, opt-out and erasure."""
