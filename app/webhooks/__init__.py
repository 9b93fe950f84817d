"""LoopMessage webhook intake: verify, dedupe, store, acknowledge."""
