"""Bundled data: the quickstart plan, published reference tables."""
