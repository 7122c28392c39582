"""mpinfer: a resumable, crash-safe batch runner for OpenAI-compatible chat APIs."""

__version__ = "0.1.0"
