"""Core ML (mlprogram .mlpackage): work in progress."""
