"""Runtimes: one module per runtime behind the protocol in `base.py`, imported lazily."""
