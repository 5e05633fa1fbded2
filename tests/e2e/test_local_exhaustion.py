"""End to end: local clients cannot exhaust the daemon's endpoints (issue 15, item 7).

The metrics endpoint once started a thread per connection, with no cap and no timeout: 300 idle
local clients made 302 threads, for as long as they stayed. Sixteen root clients sending one
byte every 2 s locked the CLI out of the control socket for as long as they went on (each byte
restarted the idle timeout), and a burst of clients was told "cannot reach the daemon" (the
socket's queue was full for a moment).

Root, iproute2 and nft (see ``netns.py``); the clients run in the lab's target namespace (the
metrics endpoint listens on its loopback) or, for the control socket, which is a file, here.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import netns
import pytest
from banlab import wait_until
from daemon import PORTSENTINEL, Daemon

from portsentinel.daemon.client import ControlChannelError, request
from portsentinel.daemon.control import MAX_CLIENTS
from portsentinel.daemon.scrape import CONNECTION_TIMEOUT, MAX_CONNECTIONS

pytestmark = [pytest.mark.e2e]
_REASON = netns.unavailable() or (None if shutil.which("nft") else "needs nft")
if _REASON:
    pytestmark.append(pytest.mark.skip(reason=_REASON))

METRICS_PORT = 19471
IDLE_CLIENTS = 300
BURST = 100
SETTINGS = {"TCP_PORTS": "11", "BLOCK_TCP": "0", "BLOCK_UDP": "0"}

# Opens COUNT connections to HOST:PORT and sends nothing; then, every 0.2 s, one JSON line:
# how many of them the server has closed so far, and how many it answered before closing.
_HOLDER = r"""
import json, socket, sys, time
host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
socks = [socket.create_connection((host, port), timeout=30) for _ in range(count)]
for s in socks:
    s.setblocking(False)
closed, answered = set(), set()
while True:
    for s in socks:
        if s in closed:
            continue
        try:
            while data := s.recv(65536):
                answered.add(s)
            closed.add(s)
        except BlockingIOError:
            pass
        except OSError:
            closed.add(s)
    print(json.dumps({"open": count, "closed": len(closed), "answered": len(answered)}),
          flush=True)
    time.sleep(0.2)
"""

_SCRAPE = r"""
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=10) as answer:
    sys.stdout.write(answer.read().decode())
"""


@pytest.fixture(scope="module")
def lab() -> Iterator[netns.Lab]:
    with netns.Lab.create(prefix="psxh") as built:
        yield built


def _threads(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("Threads:")))


def _status(lab: netns.Lab, daemon: Daemon) -> subprocess.CompletedProcess[str]:
    """``portsentinel status`` as an operator runs it, in the daemon's namespace."""
    argv = ["timeout", "40", *PORTSENTINEL, "status", "--state-dir", str(daemon.directory)]
    return lab.run(lab.target, argv, check=False, timeout=50)


def _scrape(lab: netns.Lab) -> str:
    url = f"http://127.0.0.1:{METRICS_PORT}/metrics"
    done = lab.run(lab.target, [sys.executable, "-c", _SCRAPE, url], check=False, timeout=30)
    return done.stdout if done.returncode == 0 else ""


def test_idle_metrics_clients_get_no_thread_each_and_are_closed_in_time(
    lab: netns.Lab, tmp_path: Path
) -> None:
    settings = {**SETTINGS, "METRICS_LISTEN": f"127.0.0.1:{METRICS_PORT}"}
    daemon = Daemon.start(lab, tmp_path, mode="stcp", settings=settings)
    assert "portsentinel_packets_total" in _scrape(lab)
    baseline = _threads(daemon.pid)
    holder = lab.start(
        lab.target,
        [sys.executable, "-c", _HOLDER, "127.0.0.1", str(METRICS_PORT), str(IDLE_CLIENTS)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None
    peak, report = baseline, {"closed": 0}
    end = time.monotonic() + CONNECTION_TIMEOUT + 30
    while report["closed"] < IDLE_CLIENTS and time.monotonic() < end:
        line = holder.stdout.readline()
        assert line, f"the holder exited ({holder.wait(5)})"
        report = json.loads(line)
        peak = max(peak, _threads(daemon.pid))
    lab.stop(holder)
    assert peak <= baseline + MAX_CONNECTIONS, f"{peak} threads, {baseline} before the clients"
    assert report["closed"] == IDLE_CLIENTS, f"still open after the timeout: {report}"
    assert report["answered"] >= IDLE_CLIENTS - MAX_CONNECTIONS  # told "busy", not dropped mute
    assert "portsentinel_packets_total" in wait_until(lambda: _scrape(lab), "a scrape served")
    assert _threads(daemon.pid) <= baseline + 1
    code, stderr = daemon.stop()
    assert code == 0
    assert "Traceback" not in stderr


class _Trickler:
    """A client of the control socket that sends one byte of a request every 2 s, never the
    newline, until the daemon hangs up (or the test ends)."""

    PAYLOAD = b'{"cmd": "status", "args": {}}'

    def __init__(self, path: str, stop: threading.Event) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.stop = stop
        self.dropped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        sent = 0
        try:
            while not self.stop.is_set():
                index = sent % len(self.PAYLOAD)
                self.sock.send(self.PAYLOAD[index : index + 1])
                sent += 1
                self.stop.wait(2.0)
        except OSError:
            self.dropped.set()
        finally:
            self.sock.close()


def _busy(path: str) -> bool:
    """Does a further client get "busy" (every slot taken)?"""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(10)
        probe.connect(path)
        answer = json.loads(probe.makefile("rb").readline() or b"{}")
    return str(answer.get("error", "")).startswith("busy")


def test_clients_trickling_bytes_do_not_lock_the_cli_out_of_the_control_socket(
    lab: netns.Lab, tmp_path: Path
) -> None:
    daemon = Daemon.start(lab, tmp_path, mode="stcp", settings=SETTINGS)
    path = str(tmp_path / "control.sock")
    stop = threading.Event()
    tricklers = [_Trickler(path, stop) for _ in range(MAX_CLIENTS)]
    try:
        wait_until(lambda: _busy(path), "every control slot taken by a trickler")
        started = time.monotonic()
        done = _status(lab, daemon)
        took = time.monotonic() - started
        assert done.returncode == 0, done.stderr
        assert "is running" in done.stdout
        assert took < 25, f"status took {took:.1f}s"
        # The daemon hung up on them: a byte now and then is not a request.
        wait_until(lambda: all(t.dropped.is_set() for t in tricklers), "the tricklers dropped")
    finally:
        stop.set()
        for trickler in tricklers:
            trickler.thread.join(10)
    code, _stderr = daemon.stop()
    assert code == 0


def test_a_burst_of_clients_is_served_none_told_the_daemon_is_unreachable(
    lab: netns.Lab, tmp_path: Path
) -> None:
    daemon = Daemon.start(lab, tmp_path, mode="stcp", settings=SETTINGS)
    path = str(tmp_path / "control.sock")
    failures: list[str] = []
    answered: list[object] = []
    gate = threading.Barrier(BURST)

    def ask() -> None:
        gate.wait(30)
        try:
            answered.append(request(path, "status"))
        except ControlChannelError as exc:
            failures.append(str(exc))

    askers = [threading.Thread(target=ask, daemon=True) for _ in range(BURST)]
    for asker in askers:
        asker.start()
    for asker in askers:
        asker.join(60)
    assert failures == []
    assert len(answered) == BURST
    done = _status(lab, daemon)
    assert done.returncode == 0, done.stderr
    code, _stderr = daemon.stop()
    assert code == 0
