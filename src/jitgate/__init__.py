"""jitgate: Just-In-Time access to HTTP APIs."""

__version__ = "0.1.0"
