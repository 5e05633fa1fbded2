"""PortSentinel as a system service: install, uninstall, migrate from PortSentry, the
service files and the manual.
"""
