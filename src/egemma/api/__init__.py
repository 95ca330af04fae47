"""Thin HTTP routers, one per feature."""
