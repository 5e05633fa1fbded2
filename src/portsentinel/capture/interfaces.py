"""The interfaces a capture counts: what ``/sys/class/net`` shows, checked against the kernel's
list for this network namespace, and which of them are passed on (see ``afpacket.py``).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from portsentinel.errors import CaptureError

IFF_UP: Final = 0x1
IFF_LOOPBACK: Final = 0x8
SYS_CLASS_NET: Final = Path("/sys/class/net")
_NAMESPACE_CHECK_TRIES: Final = 3


@dataclass(frozen=True, slots=True)
class Interface:
    """One network interface as ``/sys/class/net`` shows it."""

    name: str
    ifindex: int
    master: str | None
    loopback: bool
    up: bool


def read_interfaces(root: Path = SYS_CLASS_NET) -> list[Interface]:
    """Every interface under ``root``, sorted by ifindex; ones vanishing meanwhile are skipped.

    ``/sys/class/net`` shows the network namespace sysfs was mounted in, which is not always
    the caller's: ``PacketRing.refresh_interfaces`` checks that before trusting it.
    """
    found = []
    for entry in sorted(os.listdir(root)):
        path = root / entry
        try:
            ifindex = int((path / "ifindex").read_text())
            flags = int((path / "flags").read_text(), 16)
            master = (
                os.path.basename(os.readlink(path / "master"))
                if (path / "master").is_symlink()
                else None
            )
        except (FileNotFoundError, NotADirectoryError):
            continue  # not an interface (bonding_masters), or just removed
        found.append(
            Interface(entry, ifindex, master, bool(flags & IFF_LOOPBACK), bool(flags & IFF_UP))
        )
    return sorted(found, key=lambda i: i.ifindex)


def counted_ifindexes(
    interfaces: Iterable[Interface], names: Sequence[str] = (), include_loopback: bool = False
) -> frozenset[int]:
    """The interfaces whose packets are passed on.

    Named interfaces count whatever they are. Otherwise every interface without a master
    (so a packet seen on a bridge port or bond slave is taken once, on the bridge or bond),
    and loopback only when asked. Interfaces that are down count too: they receive nothing,
    and need no refresh when they come up.
    """
    if names:
        return frozenset(i.ifindex for i in interfaces if i.name in names)
    return frozenset(
        i.ifindex for i in interfaces if i.master is None and (include_loopback or not i.loopback)
    )


def read_own_interfaces() -> list[Interface]:
    """``read_interfaces`` checked against the kernel's list for this network namespace.

    sysfs reflects the namespace it was mounted in: after a bare ``setns`` it describes
    another namespace, and trusting it would silently count the wrong interfaces.
    """
    for _ in range(_NAMESPACE_CHECK_TRIES):  # an interface may come or go between two reads
        kernel = {name: index for index, name in socket.if_nameindex()}
        interfaces = read_interfaces()
        if {i.name: i.ifindex for i in interfaces} == kernel:
            return interfaces
    raise CaptureError(
        f"{SYS_CLASS_NET} does not match this network namespace's interfaces "
        "(mount a sysfs of this namespace, e.g. run under 'ip netns exec')"
    )
