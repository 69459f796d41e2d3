"""The weights package: reading checkpoints (the rest of weight loading moves here, issue #25)."""
