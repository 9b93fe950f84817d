"""Opt-in links: the CORS-safe proxy to LoopMessage generate-url."""
