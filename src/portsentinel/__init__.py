"""PortSentinel: a modern PortSentry — port-scan detection and active response for Linux."""

__version__ = "0.1.0"
