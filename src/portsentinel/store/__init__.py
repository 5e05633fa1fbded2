"""Persistent records: the SQLite store of events and bans, PortSentry's history and blocked
files, and the lock that keeps one daemon per state directory."""
