"""End to end: with RESOLVE_HOST on, a name server that never answers delays no ban.

The daemon runs in a private mount namespace whose ``/etc/resolv.conf`` (also its
``RESOLV_CONF``) names one server, 198.18.0.53: a UDP socket in the scanner namespace that
reads every query and answers none (its ``/etc/hosts`` and ``/etc/nsswitch.conf`` are the
lab's too: ``files dns``, so no lookup leaves the lab through another service). 40 forged
sources are banned first; once the response worker has them in hand, a real scanner's ban
reaches the kernel and the store within seconds, not after 40 lookups of 2 s each, and every
ban's history line is still written, with the address where no name came.

Root, iproute2, nmap, nft, hping3 and unshare (see ``banlab.py``); every packet stays inside
the lab.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import netns
import pytest
from banlab import (
    add_scanner_address,
    banned,
    burst,
    file_lines,
    nft_elements,
    source_range,
    unavailable,
    wait_until,
)
from daemon import Daemon

pytestmark = [pytest.mark.e2e]
_REASON = unavailable() or (None if shutil.which("unshare") else "needs unshare (util-linux)")
if _REASON:
    pytestmark.append(pytest.mark.skip(reason=_REASON))

SILENT_SERVER = "198.18.0.53"
FORGED = source_range("198.18.0.", 100, 139)
REAL = netns.Lab.SCANNER4
BAN_DEADLINE = 15.0  # the defect: 40 lookups of 2 s each (78 s measured) before the next ban
LINES_DEADLINE = 15.0  # each line waits for its name at most 2 s after its ban
SETTINGS = {
    "RESOLVE_HOST": "1",
    "BAN_RATE": "10000",
    "BAN_BURST": "10000",
    "BAN_STRONG_PORTS": "1",
    "BLOCK_UDP": "0",
}

# Runs in the scanner namespace: reads DNS queries on port 53 and answers none; the name of
# each query goes to the file given, a line each.
SILENT_DNS = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 53))
print("ready", flush=True)
while True:
    data = s.recv(4096)
    labels, at = [], 12
    while at < len(data) and data[at]:
        labels.append(data[at + 1 : at + 1 + data[at]].decode("ascii", "replace"))
        at += 1 + data[at]
    with open(sys.argv[2], "a") as out:
        out.write(".".join(labels) + "\n")
"""

# In the daemon's own mount namespace (``ip netns exec`` made it a slave of the host's; the
# binds are private to it): the lab's resolver files over the host's, then the daemon itself.
BIND_ETC = (
    'mount --bind "$1" /etc/resolv.conf && mount --bind "$2" /etc/hosts && '
    'mount --bind "$3" /etc/nsswitch.conf && shift 3 && exec "$@"'
)


@pytest.fixture
def lab() -> Iterator[netns.Lab]:
    with netns.Lab.create("psn") as built:
        add_scanner_address(built, SILENT_SERVER)
        built.check_closed()
        yield built


def silent_server(lab: netns.Lab, queries: Path) -> subprocess.Popen[str]:
    proc = lab.start(
        lab.scanner,
        [sys.executable, "-c", SILENT_DNS, SILENT_SERVER, str(queries)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


def lab_resolver(directory: Path) -> list[str]:
    """The wrapper that gives the daemon the lab's resolver files (written to ``directory``)."""
    resolv = directory / "resolv_conf"  # also the RESOLV_CONF setting (``write_config``)
    resolv.write_text(f"nameserver {SILENT_SERVER}\n")
    hosts = directory / "etc_hosts"
    hosts.write_text("127.0.0.1 localhost\n::1 localhost\n")
    nsswitch = directory / "nsswitch.conf"
    kept = [
        line for line in Path("/etc/nsswitch.conf").read_text().splitlines()
        if not line.lstrip().startswith("hosts:")
    ]  # fmt: skip
    nsswitch.write_text("\n".join([*kept, "hosts: files dns", ""]))
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", BIND_ETC, "sh",
            str(resolv), str(hosts), str(nsswitch)]  # fmt: skip


def reverse_name(address: str) -> str:
    return ".".join(reversed(address.split("."))) + ".in-addr.arpa"


def history_hosts(directory: Path) -> dict[str, str]:
    """Address -> the ``name/ip`` field of its history line."""
    found = {}
    for line in file_lines(directory / "history_file"):
        field = line.split(" Host: ", 1)[1].split(" ", 1)[0]
        found[field.rsplit("/", 1)[1]] = field
    return found


def lines_for(directory: Path, addresses: set[str]) -> dict[str, str] | None:
    """``history_hosts`` once it holds every one of ``addresses``, else None."""
    found = history_hosts(directory)
    return found if found.keys() >= addresses else None


def test_a_silent_name_server_delays_no_ban_and_every_line_is_written(
    lab: netns.Lab, tmp_path: Path
) -> None:
    queries = tmp_path / "queries"
    server = silent_server(lab, queries)
    daemon = Daemon.start(lab, tmp_path, settings=SETTINGS, wrapper=lab_resolver(tmp_path))
    try:
        sender = burst(lab, FORGED, [80], rate=1000.0)
        assert sender.communicate(timeout=40)[0].strip() == str(len(FORGED))
        # In the store: the response worker has them in hand (their lines are next).
        wait_until(lambda: set(FORGED) <= banned(lab, daemon), "the forged sources banned")
        wait_until(queries.exists, "the daemon asking the silent server")

        sent = time.monotonic()
        real = burst(lab, [REAL], [81])
        assert real.communicate(timeout=40)[0].strip() == "1"
        wait_until(lambda: REAL in (nft_elements(lab, 4) or {}), "the real scanner in the kernel")
        wait_until(
            lambda: REAL in banned(lab, daemon), "the real scanner in the store", BAN_DEADLINE
        )
        took = time.monotonic() - sent
        assert took < BAN_DEADLINE, f"the real scanner's ban took {took:.1f}s"

        every = {*FORGED, REAL}
        hosts = wait_until(
            lambda: lines_for(tmp_path, every), "a history line for every ban", LINES_DEADLINE
        )
        assert all(hosts[address] == f"{address}/{address}" for address in every), hosts
        asked = set(queries.read_text().split())
        assert asked & {reverse_name(a) for a in every}, f"no PTR query for a ban: {asked}"
        assert asked <= {reverse_name(a) for a in every}, f"other lookups: {asked}"
    except BaseException:
        with contextlib.suppress(AssertionError):  # the first failure is the one to see
            daemon.stop()
        raise
    code, stderr = daemon.stop()  # at once: a lookup still under way holds up no exit
    netns.Lab.stop(server)
    assert code == 0, stderr
    assert "Traceback" not in stderr, stderr


def test_the_lab_resolver_wrapper_keeps_the_host_files(lab: netns.Lab, tmp_path: Path) -> None:
    """The binds stay inside the daemon's namespace: the host's resolv.conf is unchanged."""
    before = Path("/etc/resolv.conf").read_bytes()
    wrapper = lab_resolver(tmp_path)
    done = lab.run(lab.target, [*wrapper, "cat", "/etc/resolv.conf"])
    assert done.stdout == f"nameserver {SILENT_SERVER}\n"
    assert Path("/etc/resolv.conf").read_bytes() == before
