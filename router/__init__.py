"""hybrid-router: an OpenAI-compatible proxy that defers what can wait to the providers' Batch APIs."""

__version__ = "0.1.0"
