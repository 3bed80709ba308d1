"""Tripwire: website behaviour to webhooks."""

__version__ = "0.1.0"
