"""Durable state: stored responses and conversations (``base.py`` interface, ``sqlite.py``)."""
