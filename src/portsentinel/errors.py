"""One base error for the project, and one subclass per kind of fault.

Every error a user can cause carries enough to find the fault: a config error names the
file, the line and the key; a decode error is the remote side's fault and is only counted.
"""

from __future__ import annotations


class PortSentinelError(Exception):
    """Base of every error PortSentinel raises on purpose."""


class ConfigError(PortSentinelError):
    """A configuration problem, located as ``FILE:LINE: KEY: what is wrong (expected)``."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        key: str | None = None,
        expected: str | None = None,
    ) -> None:
        self.file = file
        self.line = line
        self.key = key
        self.message = message
        self.expected = expected
        super().__init__(self.render())

    def render(self) -> str:
        where = ""
        if self.file is not None:
            where = f"{self.file}:{self.line}: " if self.line is not None else f"{self.file}: "
        key = f"{self.key}: " if self.key else ""
        expected = f" (expected {self.expected})" if self.expected else ""
        return f"{where}{key}{self.message}{expected}"


class ConfigErrors(PortSentinelError):  # noqa: N818 - a batch of ConfigError, named for it
    """Several configuration errors found in one pass; ``errors`` keeps them all."""

    def __init__(self, errors: list[ConfigError]) -> None:
        self.errors = errors
        super().__init__("\n".join(e.render() for e in errors))


class DecodeError(PortSentinelError):
    """A frame that cannot be decoded: malformed, truncated or inconsistent.

    The remote side's fault: the caller counts it and goes on.
    """


class CaptureError(PortSentinelError):
    """A capture source (pcap file, AF_PACKET socket) could not be read."""


class BackendError(PortSentinelError):
    """A firewall or command backend failed."""


class StoreError(PortSentinelError):
    """The state store could not be read or written."""
