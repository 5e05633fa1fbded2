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

systemd-resolved: its ``/etc/resolv.conf`` names only its local stub (127.0.0.53, or
127.0.0.54 for the proxy stub), and the resolvers it really asks are listed in
``/run/systemd/resolve/resolv.conf`` (the ``RESOLVED_CONF`` setting; ``resolvectl dns`` shows the
same list). So when resolv.conf names no name server but loopback ones (or none at all, where
glibc asks 127.0.0.1), that file is read too and its name servers are the ``upstream`` ones.
A missing upstream file says nothing: systemd-resolved is simply not running.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, replace

from portsentinel.errors import ConfigError
from portsentinel.files import MIB, read_regular

KEY = "RESOLV_CONF"
UPSTREAM_KEY = "RESOLVED_CONF"
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
    upstream: Resolvers | None = None
    """What a local stub forwards to (systemd-resolved's list), when it was read."""

    @property
    def packed(self) -> tuple[bytes, ...]:
        """The addresses packed (4 or 16 bytes; an IPv6 zone is not part of the address)."""
        return tuple(dict.fromkeys(address.packed for address in self.addresses))

    @property
    def stub_only(self) -> bool:
        """True when no name server is named but loopback ones: a local stub answers."""
        return all(address.is_loopback for address in self.addresses)

    def files(self) -> tuple[Resolvers, ...]:
        """This file's resolvers, then the upstream file's (if read)."""
        return (self,) if self.upstream is None else (self, *self.upstream.files())


def load_resolvers(path: str, upstream: str | None = None) -> Resolvers:
    """``path`` (resolv.conf) and, when it names only a local stub, ``upstream``
    (systemd-resolved's file; None or empty: none): never raises (see the module text)."""
    resolvers = load_resolv_conf(path)
    if not upstream or not resolvers.stub_only:
        return resolvers
    found = load_resolv_conf(upstream, missing_ok=True, key=UPSTREAM_KEY)
    return replace(resolvers, warnings=resolvers.warnings + found.warnings, upstream=found)


def load_resolv_conf(path: str, *, missing_ok: bool = False, key: str = KEY) -> Resolvers:
    """Read and parse ``path``; never raises for the file's sake (see the module text).
    ``missing_ok``: a file that does not exist is no warning; ``key``: the setting named in
    warnings."""
    try:
        data = read_regular(path, MAX_RESOLV_CONF_BYTES, "resolv.conf")
    except FileNotFoundError:
        if missing_ok:
            return Resolvers(path)
        message = "file does not exist; no resolver known"
        return Resolvers(path, warnings=(_warn(path, message, key=key),))
    except OSError as exc:
        message = f"cannot read the file ({exc.strerror or exc}); no resolver known"
        return Resolvers(path, warnings=(_warn(path, message, key=key),))
    return parse_resolv_conf(data.decode("utf-8", "replace"), path, key=key)


def parse_resolv_conf(text: str, source: str, *, key: str = KEY) -> Resolvers:
    """The name servers of resolv.conf text named ``source``. Pure."""
    addresses: list[IPAddress] = []
    warnings: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        words = _COMMENT.split(line, 1)[0].split()
        if not words or words[0] != _KEYWORD:
            continue
        if len(words) < 2:
            warnings.append(_warn(source, "nameserver without an address", number, key=key))
            continue
        try:
            addresses.append(ipaddress.ip_address(words[1]))
        except ValueError:
            message = f"{words[1]!r} is not an IPv4 or IPv6 address; line skipped"
            warnings.append(_warn(source, message, number, key=key))
    return Resolvers(source, tuple(dict.fromkeys(addresses)), tuple(warnings))


def _warn(source: str, message: str, line: int | None = None, *, key: str = KEY) -> str:
    return ConfigError(message, file=source, line=line, key=key).render()
