"""Persistent records: PortSentry's history and blocked files (and later the SQLite store)."""
