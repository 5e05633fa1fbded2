"""The interface rules on a fake ``/sys/class/net``: what is read, and which interfaces count."""

from __future__ import annotations

import os
from pathlib import Path

from portsentinel.capture.interfaces import Interface, counted_ifindexes, read_interfaces


def fake_sysfs(root: Path, links: dict[str, tuple[int, int, str | None]]) -> Path:
    for name, (ifindex, flags, master) in links.items():
        path = root / name
        path.mkdir()
        (path / "ifindex").write_text(f"{ifindex}\n")
        (path / "flags").write_text(f"{flags:#x}\n")
        if master is not None:
            os.symlink(f"../{master}", path / "master")
    (root / "bonding_masters").write_text("bond0\n")
    return root


def test_interfaces_are_read_from_sysfs(tmp_path: Path) -> None:
    root = fake_sysfs(
        tmp_path,
        {
            "lo": (1, 0x9, None),
            "eth0": (2, 0x1003, "br0"),
            "br0": (3, 0x1003, None),
            "wg0": (4, 0x90, None),
        },
    )
    assert read_interfaces(root) == [
        Interface("lo", 1, None, loopback=True, up=True),
        Interface("eth0", 2, "br0", loopback=False, up=True),
        Interface("br0", 3, None, loopback=False, up=True),
        Interface("wg0", 4, None, loopback=False, up=False),
    ]


def test_counted_interfaces() -> None:
    interfaces = [
        Interface("lo", 1, None, loopback=True, up=True),
        Interface("eth0", 2, "bond0", loopback=False, up=True),
        Interface("bond0", 3, None, loopback=False, up=True),
        Interface("wg0", 4, None, loopback=False, up=False),
    ]
    assert counted_ifindexes(interfaces) == {3, 4}
    assert counted_ifindexes(interfaces, include_loopback=True) == {1, 3, 4}
    assert counted_ifindexes(interfaces, names=("eth0", "lo", "absent")) == {1, 2}
