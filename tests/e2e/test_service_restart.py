"""End to end: a web server restarting under a client that keeps retrying is no scan.

The daemon (``atcp,audp``, BLOCK_TCP 1, SCAN_TRIGGER 0: one probe is one ban) runs in the
lab's target namespace, where a TCP server listens on port 80. A client in the scanner
namespace connects every 0.2 s; the server is stopped, stays down for three seconds (the
client's SYNs meet a closed port and are refused) and comes back. With RECENTLY_IN_USE (the
default 10 minutes) the port is no target while it is down: no event, no ban, and the client
gets through again once the server is back. The control run, RECENTLY_IN_USE 0, is what
PortSentry (and PortSentinel before) does: the retrying client is taken for a scanner and
banned, so its connections after the restart fail.

Barrier, not a sleep: after the client's last try, the scanner's IPv6 address probes a
closed port; once that event is written, the client's earlier SYNs (IPv4) were judged.
Root, iproute2 and nft only; every packet stays inside the lab.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import netns
import pytest
from daemon import Daemon, statistics

pytestmark = [pytest.mark.e2e]
_REASON = netns.unavailable() or (None if shutil.which("nft") else "needs nft")
if _REASON:
    pytestmark.append(pytest.mark.skip(reason=_REASON))

PORT = 80
MARKER = 81
DOWN = 3.0

SERVER = """
import socket, sys, threading
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("", int(sys.argv[1])))
s.listen(64)
print("ready", flush=True)
while True:
    conn, _ = s.accept()
    conn.sendall(b"HTTP/1.0 200 OK\\r\\n\\r\\n")
    conn.close()
"""

# Connects every 0.2 s until told to stop (stdin closes); prints one line per try:
# ok, refused or the error; a banned client's SYNs are dropped, so its tries time out.
CLIENT = """
import select, socket, sys, time
while not select.select([sys.stdin], [], [], 0.2)[0]:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(1.0)
    try:
        s.connect((sys.argv[1], int(sys.argv[2])))
        print("ok" if s.recv(64).startswith(b"HTTP") else "bad", flush=True)
    except ConnectionRefusedError:
        print("refused", flush=True)
    except OSError as exc:
        print(type(exc).__name__, flush=True)
    finally:
        s.close()
"""


def start_server(lab: netns.Lab) -> subprocess.Popen[str]:
    proc = lab.start(lab.target, [sys.executable, "-c", SERVER, str(PORT)],
                     stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


def wait_for(
    lines: list[str], proc: subprocess.Popen[str], what: set[str], deadline: float
) -> None:
    """Read the client's lines until one is in ``what``."""
    assert proc.stdout is not None
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        line = proc.stdout.readline().strip()
        if not line:
            break
        lines.append(line)
        if line in what:
            return
    raise AssertionError(f"the client never said {what!r}: {lines}")


def restart_under_client(lab: netns.Lab, daemon: Daemon) -> list[str]:
    """Stop the server for DOWN seconds while the client retries; the client's outcomes."""
    server = start_server(lab)
    client = lab.start(lab.scanner, [sys.executable, "-c", CLIENT, lab.TARGET4, str(PORT)],
                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    lines: list[str] = []
    try:
        wait_for(lines, client, {"ok"}, 10.0)
        lab.stop(server)
        wait_for(lines, client, {"refused", "TimeoutError"}, 10.0)  # down (or banned)
        down_until = time.monotonic() + DOWN
        assert client.stdout is not None
        while time.monotonic() < down_until:  # the client keeps retrying the closed port
            lines.append(client.stdout.readline().strip())  # (banned: time-outs, 1 s each)
        server = start_server(lab)
        after = len(lines)
        # Until three tries in a row got through (tries made while it was down may still
        # wait in the pipe on a loaded machine), or 10 s (a banned client: time-outs).
        end = time.monotonic() + 10.0
        while time.monotonic() < end and lines[-3:] != ["ok"] * 3:
            lines.append(client.stdout.readline().strip())
    finally:
        assert client.stdin is not None
        client.stdin.close()
        lab.stop(client)
        lab.stop(server)
    # Barrier: a probe from the scanner's other address, judged after the client's SYNs.
    lab.run(lab.scanner, [sys.executable, "-c", f"""
import socket
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.settimeout(2)
try:
    s.connect(("{lab.TARGET6}", {MARKER}))
except OSError:
    pass
"""], timeout=10)  # fmt: skip
    daemon.wait_for_events(
        lambda events: any(e["src"] == lab.SCANNER6 for e in events), "the marker probe"
    )
    return lines[after:]


@pytest.mark.parametrize("window", ["10m", "0"], ids=["recently-in-use", "control"])
def test_restarting_service_and_retrying_client(window: str, tmp_path: Path) -> None:
    with netns.Lab.create("psrs") as lab:
        settings = {"BLOCK_TCP": "1", "RECENTLY_IN_USE": window, "KERNEL_HOLD": "0"}
        daemon = Daemon.start(lab, tmp_path / "d", settings=settings)
        try:
            after_restart = restart_under_client(lab, daemon)
            client_events = [e for e in daemon.events() if e["src"] == lab.SCANNER4]
        finally:
            _code, stderr = daemon.stop()
        counters = statistics(stderr)
        if window == "0":  # the control: what PortSentry does
            assert [(e["port"], e["action"]) for e in client_events][:1] == [(PORT, "block")]
            assert "ok" not in after_restart, after_restart  # banned: its tries time out
            assert counters["recently_in_use"] == 0
        else:
            assert client_events == [], json.dumps(client_events)
            assert after_restart[-3:] == ["ok"] * 3, after_restart
            assert counters["recently_in_use"] >= 3  # the SYNs that met the closed port
