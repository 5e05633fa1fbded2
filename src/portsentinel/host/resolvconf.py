"""The name servers of resolv.conf (the ``RESOLV_CONF`` setting): never to be blocked.

Why: a host that blocks its resolver cannot resolve names any more, and a forged scan "from"
the resolver's address would make a naive responder do exactly that. The file is read again
on every refresh of the never-block set: DHCP clients, NetworkManager and VPNs rewrite it.

Parsing follows glibc's resolver where that matters and is more lenient where leniency only
protects more: a ``nameserver`` line names one address (the first word after the keyword;
the rest is ignored); lines starting with ``#`` or ``;`` are comments, and so is anything
after one of those characters; an IPv6 address may carry a zone (``fe80::1%eth0``). glibc
uses the first three name servers only; all of them are returned here, since a resolver the
admin listed is still one not to cut off. The file belongs to the system, not to us, so
nothing in it is an error: a missing file, an unreadable one or a bad address is a warning.
So is a path that is not a regular file (a FIFO, a device, a symlink loop) or a file larger
than ``MAX_RESOLV_CONF_BYTES``: it is refused at once and said, never waited on or read
without end (the never-block set is refreshed from the daemon's loop).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from portsentinel.errors import ConfigError
from portsentinel.files import MIB, read_regular

KEY = "RESOLV_CONF"
# glibc reads a few name servers and options; a megabyte is no resolv.conf.
MAX_RESOLV_CONF_BYTES = 1 * MIB
_KEYWORD = "nameserver"
_COMMENT = re.compile(r"[#;]")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class Resolvers:
    """The name servers one resolv.conf names, in file order without repeats."""

    path: str
    addresses: tuple[IPAddress, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def packed(self) -> tuple[bytes, ...]:
        """The addresses packed (4 or 16 bytes; an IPv6 zone is not part of the address)."""
        return tuple(dict.fromkeys(address.packed for address in self.addresses))


def load_resolv_conf(path: str) -> Resolvers:
    """Read and parse ``path``; never raises for the file's sake (see the module text)."""
    try:
        data = read_regular(path, MAX_RESOLV_CONF_BYTES, "resolv.conf")
    except FileNotFoundError:
        return Resolvers(path, warnings=(_warn(path, "file does not exist; no resolver known"),))
    except OSError as exc:
        message = f"cannot read the file ({exc.strerror or exc}); no resolver known"
        return Resolvers(path, warnings=(_warn(path, message),))
    return parse_resolv_conf(data.decode("utf-8", "replace"), path)


def parse_resolv_conf(text: str, source: str) -> Resolvers:
    """The name servers of resolv.conf text named ``source``. Pure."""
    addresses: list[IPAddress] = []
    warnings: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        words = _COMMENT.split(line, 1)[0].split()
        if not words or words[0] != _KEYWORD:
            continue
        if len(words) < 2:
            warnings.append(_warn(source, "nameserver without an address", number))
            continue
        try:
            addresses.append(ipaddress.ip_address(words[1]))
        except ValueError:
            message = f"{words[1]!r} is not an IPv4 or IPv6 address; line skipped"
            warnings.append(_warn(source, message, number))
    return Resolvers(source, tuple(dict.fromkeys(addresses)), tuple(warnings))


def _warn(source: str, message: str, line: int | None = None) -> str:
    return ConfigError(message, file=source, line=line, key=KEY).render()
