"""End to end: what PortSentry's KILL_ROUTE left behind, in a lab namespace. The real ``route``
and ``iptables`` commands make the leftovers as PortSentry 1.2 ran them (its KILL_ROUTE with
the address of each history line), beside a route and a rule PortSentry never made; plain
``migrate`` lists PortSentry's and removes nothing, ``migrate --clean-legacy`` removes exactly
those. The verb runs under ``ip netns exec`` in a PID namespace of its own (so that a
PortSentry running elsewhere on this machine does not make it refuse), never in this
machine's own network namespace.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import netns
import pytest

_REASON = netns.unavailable()
for _tool in ("route", "iptables", "unshare"):
    if _REASON is None and shutil.which(_tool) is None:
        _REASON = f"{_tool} is absent"

RECORDED = ("198.18.0.5", "198.18.0.6")  # in PortSentry's history
OTHER = "198.18.0.9"  # the administrator's own: never touched

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(_REASON is not None, reason=_REASON or "")]


@pytest.fixture
def lab() -> Iterator[netns.Lab]:
    with netns.Lab.create() as created:
        yield created


def portsentry_dir(tmp_path: Path, kill_route: str) -> Path:
    folder = tmp_path / "portsentry"
    folder.mkdir()
    history = tmp_path / "portsentry.history"
    history.write_text(
        "".join(
            f"1403884279 - 06/27/2014 17:51:1{n} Host: {a}/{a} Port: 1 TCP Blocked\n"
            for n, a in enumerate(RECORDED)
        )
    )
    (folder / "portsentry.conf").write_text(
        f'TCP_PORTS="1"\nHISTORY_FILE="{history}"\nBLOCKED_FILE="{tmp_path}/portsentry.blocked"\n'
        f'BLOCK_TCP="1"\nKILL_ROUTE="{kill_route}"\n'
    )
    return folder


def migrate(lab: netns.Lab, tmp_path: Path, folder: Path, *extra: str) -> tuple[int, str, str]:
    argv = [
        "unshare", "--pid", "--fork", "--mount-proc",
        sys.executable, "-m", "portsentinel", "migrate", "--from", str(folder),
        "--defaults", str(tmp_path / "no-defaults"), "--output", str(tmp_path / "out.conf"),
        *extra,
    ]  # fmt: skip
    done = lab.run(lab.target, argv, check=False)
    (tmp_path / "out.conf").unlink(missing_ok=True)
    return done.returncode, done.stdout, done.stderr


def routes(lab: netns.Lab) -> str:
    return lab.run(lab.target, ["ip", "-4", "route", "show"]).stdout


def rules(lab: netns.Lab) -> str:
    return lab.run(lab.target, ["iptables", "-S", "INPUT"]).stdout


def test_reject_routes_are_listed_then_removed_only_when_asked(
    lab: netns.Lab, tmp_path: Path
) -> None:
    folder = portsentry_dir(tmp_path, "/sbin/route add -host $TARGET$ reject")
    for address in (*RECORDED, OTHER):
        lab.run(lab.target, ["route", "add", "-host", address, "reject"])
    status, out, err = migrate(lab, tmp_path, folder)
    assert status == 0, err
    assert "Left in the kernel by PortSentry's KILL_ROUTE" in out
    for address in RECORDED:
        assert f"  - route unreachable {address}\n" in out
    assert OTHER not in out
    assert all(f"unreachable {a} " in routes(lab) for a in (*RECORDED, OTHER))  # listed only
    status, out, err = migrate(lab, tmp_path, folder, "--clean-legacy")
    assert (status, err) == (0, "")
    assert out.splitlines() == [f"removed route unreachable {a}" for a in RECORDED]
    left = routes(lab)
    assert not any(f"unreachable {a} " in left for a in RECORDED)
    assert f"unreachable {OTHER} " in left
    status, out, _err = migrate(lab, tmp_path, folder, "--clean-legacy")
    assert (status, out) == (0, "nothing left behind by PortSentry's KILL_ROUTE\n")


def test_iptables_rules_are_removed_with_their_duplicates(lab: netns.Lab, tmp_path: Path) -> None:
    folder = portsentry_dir(tmp_path, "/sbin/iptables -I INPUT -s $TARGET$ -j DROP")
    for address in (*RECORDED, RECORDED[0], OTHER):  # a restarted PortSentry inserted it again
        lab.run(lab.target, ["iptables", "-I", "INPUT", "-s", address, "-j", "DROP"])
    try:
        status, out, err = migrate(lab, tmp_path, folder)
        assert status == 0, err
        for address in RECORDED:
            assert f"  - rule -I INPUT -s {address} -j DROP\n" in out
        status, out, err = migrate(lab, tmp_path, folder, "--clean-legacy")
        assert (status, err) == (0, "")
        assert out.splitlines() == [
            f"removed rule -I INPUT -s {RECORDED[0]} -j DROP (2 copies)",
            f"removed rule -I INPUT -s {RECORDED[1]} -j DROP",
        ]
        assert rules(lab).splitlines() == ["-P INPUT ACCEPT", f"-A INPUT -s {OTHER}/32 -j DROP"]
    finally:  # iptables-nft's table lives in the namespace, which the lab deletes
        lab.run(lab.target, ["iptables", "-F", "INPUT"], check=False)
