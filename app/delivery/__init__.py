"""The outbox: delivery jobs to Call Loop and LoopMessage, and the worker that runs them."""
