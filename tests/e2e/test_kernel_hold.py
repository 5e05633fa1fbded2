"""End to end: KERNEL_HOLD=1, the kernel holds a probe's source before the daemon has seen it.

In the namespace lab, with the daemon in atcp/audp and the hold on:
- a real nmap scan (TCP SYN over IPv4 and IPv6, UDP) learns nothing: no port is reported open
  or closed (the kernel answered no probe, not even on a port a service listens on, and the
  ban follows), but for what its first packets reached before one was a probe (a port in use
  or an excluded one: ``learned``); the hold chain is gone once the daemon stops;
- a client whose probe the daemon judges too weak to ban (BLOCK_MIN_PORTS 2) keeps its
  established connection through the hold and is released at once, long before the hold
  time ends;
- the first client of a service that starts just after its SYN arrived gets through within
  the hold time (the kernel's retransmission after the release);
- an address of the ignore list is never held (the kernel's keep set).

Root, iproute2, nmap and nft (see ``banlab.py``); every packet stays inside the lab.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import netns
import pytest
from banlab import add_scanner_address, nft_elements, nft_set, unavailable, wait_until
from daemon import Daemon, write_config

pytestmark = [pytest.mark.e2e]
_REASON = unavailable(("nmap", "nft"))
if _REASON:
    pytestmark.append(pytest.mark.skip(reason=_REASON))

Lab = netns.Lab
CLIENT4 = "198.18.0.3"
ECHO_PORT = 8080  # above 1024: not watched by the advanced modes
LISTENING = 80  # watched, and in use: a scanner must not learn that either
HOLD = {"KERNEL_HOLD": "1"}


@pytest.fixture
def lab() -> Iterator[netns.Lab]:
    with Lab.create("psh") as built:
        yield built


def nft(lab: netns.Lab, *args: str) -> subprocess.CompletedProcess[str]:
    return lab.run(lab.target, ["nft", *args], check=False)


def set_elements(lab: netns.Lab, name: str) -> set[str]:
    return set(nft_set(lab, name) or {})


LISTENER = """
import socket, sys, time
family = socket.AF_INET6
s = socket.socket(family, socket.SOCK_STREAM)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
time.sleep(float(sys.argv[2]))
s.bind(("::", int(sys.argv[1])))
s.listen(16)
print("ready", flush=True)
s.settimeout(1.0)
end = time.monotonic() + 120
while time.monotonic() < end:
    try:
        conn, _ = s.accept()
    except OSError:
        continue
    conn.settimeout(30)
    try:
        while data := conn.recv(100):
            conn.sendall(data)
    except OSError:
        pass
    conn.close()
"""


def listen(
    lab: netns.Lab, port: int, after: float = 0.0, wait: bool = True
) -> subprocess.Popen[str]:
    """An echo service in the target on ``port`` (both families), listening ``after`` seconds
    from now; ``wait``: return once it listens."""
    proc = lab.start(lab.target, [sys.executable, "-c", LISTENER, str(port), str(after)],
                     stdout=subprocess.PIPE, text=True)  # fmt: skip
    if wait:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
    return proc


def nmap_states(lab: netns.Lab, kind: str, ports: str, six: bool = False) -> dict[str, int]:
    """Scan the target; the count of ports per state nmap reported (``open``, ``closed``...),
    with the ports nmap listed one by one also under ``port N: STATE``."""
    dst = Lab.TARGET6 if six else Lab.TARGET4
    argv = ["timeout", "120", "nmap", "-n", "-Pn", *(["-6"] if six else []), kind, "-T4",
            "--min-rate", "1000",  # a scan that meets only silence otherwise slows down
            "--max-retries", "1", "-p", ports, "-oX", "-", dst]  # fmt: skip
    done = lab.run(lab.scanner, argv, timeout=130)
    states: dict[str, int] = {}
    listed = re.findall(r'<port protocol="[a-z]+" portid="(\d+)"><state state="([a-z|]+)"',
                        done.stdout)  # fmt: skip
    for port, state in listed:
        states[state] = states.get(state, 0) + 1
        states[f"port {port}: {state}"] = 1
    for state, count in re.findall(r'<extraports state="([a-z|]+)" count="(\d+)"', done.stdout):
        states[state] = states.get(state, 0) + int(count)
    return states


def learned(states: dict[str, int], unwatched: set[int]) -> list[str]:
    """The ports nmap found open or closed, but for ``unwatched`` ones. A packet to a port in
    use, or to one of ADVANCED_EXCLUDE_x's ports, is no probe (a client may send it), so the
    hold starts at the scan's first packet to any other port: what came before it is answered
    as anyone is answered (nmap tries 80, 139 and 113 early). PortSentry excludes ident and
    NetBIOS because clients legitimately connect there."""
    found = []
    for key in states:
        port, _, state = key.removeprefix("port ").partition(": ")
        if key.startswith("port ") and state in ("open", "closed") and int(port) not in unwatched:
            found.append(key)
    return found


EXCLUDED_TCP = {113, 139}  # ADVANCED_EXCLUDE_TCP's default
EXCLUDED_UDP = {520, 138, 137, 67}  # ADVANCED_EXCLUDE_UDP's default


@pytest.mark.parametrize(("kind", "ports", "six"), [
    ("-sS", "1-1024", False), ("-sS", "1-1024", True), ("-sU", "1-200", False),
])  # fmt: skip
def test_a_real_scan_learns_nothing_and_is_banned(
    lab: netns.Lab, tmp_path: Path, kind: str, ports: str, six: bool
) -> None:
    service = listen(lab, LISTENING)
    daemon = Daemon.start(lab, tmp_path, settings=HOLD)
    try:
        assert "KERNEL_HOLD: the kernel holds the source of a probe" in daemon.stderr()
        states = nmap_states(lab, kind, ports, six)
        scanner = Lab.SCANNER6 if six else Lab.SCANNER4
        wait_until(lambda: scanner in (nft_elements(lab, 6 if six else 4) or {}), "the ban")
    finally:
        code, err = daemon.stop()
        Lab.stop(service)
    total = sum(int(n) for key, n in states.items() if not key.startswith("port "))
    assert total == (1024 if ports == "1-1024" else 200), states
    unwatched = EXCLUDED_UDP if kind == "-sU" else {*EXCLUDED_TCP, LISTENING}
    assert learned(states, unwatched) == [], f"the scanner learned {states}"
    assert states.get("open", 0) + states.get("closed", 0) <= 3, states  # its first packets
    assert code == 0, err
    assert nft(lab, "list", "chain", "inet", "portsentinel", "hold").returncode != 0


CLIENT = """
import json, socket, sys, time
dst, src, echo_port, probe_port = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
out = {}
def connect(port, timeout):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((src, 0))
    s.settimeout(timeout)
    s.connect((dst, port))
    return s
kept = connect(echo_port, 5)
kept.sendall(b"1"); out["before"] = kept.recv(10).decode()
try:  # shorter than the SYN's first retransmission (1 s), which comes after the release
    connect(probe_port, 0.5).close(); out["probe"] = "answered: open"
except socket.timeout:
    out["probe"] = "no answer"
except OSError as exc:
    out["probe"] = f"answered: {exc}"
kept.sendall(b"2"); out["during"] = kept.recv(10).decode()
started = time.monotonic()
while time.monotonic() - started < 40:
    try:
        connect(echo_port, 1).close()
        out["new_after"] = round(time.monotonic() - started, 2)
        break
    except OSError:
        pass
kept.sendall(b"3"); out["after"] = kept.recv(10).decode()
print(json.dumps(out))
"""


def test_a_client_not_banned_keeps_its_connection_and_is_released_at_once(
    lab: netns.Lab, tmp_path: Path
) -> None:
    """A probe too weak to ban (one port, BLOCK_MIN_PORTS 2): the kernel drops it unanswered
    and holds the client; the established connection flows on; the daemon releases it, so a
    new connection gets through in far less than the hold time (60 s here)."""
    add_scanner_address(lab, CLIENT4)
    service = listen(lab, ECHO_PORT)
    daemon = Daemon.start(lab, tmp_path, settings={**HOLD, "KERNEL_HOLD_TIME": "60s",
                                                   "BLOCK_MIN_PORTS": "2"})  # fmt: skip
    try:
        argv = [sys.executable, "-c", CLIENT, Lab.TARGET4, CLIENT4, str(ECHO_PORT), "7"]
        result = json.loads(lab.run(lab.scanner, argv, timeout=90).stdout)
        held, freed = set_elements(lab, "hold4"), set_elements(lab, "free4")
        events = daemon.events()
    finally:
        code, err = daemon.stop()
        Lab.stop(service)
    assert result["probe"] == "no answer", result
    assert (result["before"], result["during"], result["after"]) == ("1", "2", "3")
    assert result["new_after"] < 20, result
    assert CLIENT4 in held
    assert CLIENT4 in freed
    assert any(e["src"] == CLIENT4 and e["reason"] == "too few ports for a block" for e in events)
    assert code == 0, err


FIRST_CLIENT = """
import json, socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.bind((sys.argv[2], 0))
s.settimeout(float(sys.argv[4]))
started = time.monotonic()
try:
    s.connect((sys.argv[1], int(sys.argv[3])))
    print(json.dumps({"connected": round(time.monotonic() - started, 2)}))
except OSError as exc:
    print(json.dumps({"failed": str(exc), "after": round(time.monotonic() - started, 2)}))
"""


def test_the_first_client_of_a_service_starting_now_gets_through_within_the_hold_time(
    lab: netns.Lab, tmp_path: Path
) -> None:
    """Its SYN comes before the service listens: held (unanswered, where without the hold it
    got a RST and failed at once); the service starts 0.3 s later and the SYN's retransmission
    gets through, within the hold time."""
    add_scanner_address(lab, CLIENT4)
    hold_time = 10.0
    daemon = Daemon.start(lab, tmp_path, settings={**HOLD, "KERNEL_HOLD_TIME": "10s",
                                                   "BLOCK_MIN_PORTS": "2"})  # fmt: skip
    try:
        service = listen(lab, 800, after=0.3, wait=False)
        argv = [sys.executable, "-c", FIRST_CLIENT, Lab.TARGET4, CLIENT4, "800", "30"]
        result = json.loads(lab.run(lab.scanner, argv, timeout=60).stdout)
    finally:
        code, err = daemon.stop()
    Lab.stop(service)
    assert "connected" in result, result
    assert result["connected"] <= hold_time, result
    assert code == 0, err


def test_an_ignored_address_is_never_held(lab: netns.Lab, tmp_path: Path) -> None:
    add_scanner_address(lab, CLIENT4)
    (tmp_path / "ignore_file").write_text(f"{CLIENT4}\n")  # the config's IGNORE_FILE
    daemon = Daemon.start(lab, tmp_path, settings=HOLD)
    try:
        wait_until(lambda: CLIENT4 in set_elements(lab, "keep4"), "the keep set")
        argv = [sys.executable, "-c", FIRST_CLIENT, Lab.TARGET4, CLIENT4, "7", "5"]
        result = json.loads(lab.run(lab.scanner, argv, timeout=30).stdout)
        held = set_elements(lab, "hold4")
    finally:
        code, err = daemon.stop()
    assert "Connection refused" in result.get("failed", ""), result  # the kernel's RST
    assert CLIENT4 not in held
    assert code == 0, err


def test_a_reload_turns_the_hold_off_and_on(lab: netns.Lab, tmp_path: Path) -> None:
    daemon = Daemon.start(lab, tmp_path, settings=HOLD)

    def chain() -> bool:
        return nft(lab, "list", "chain", "inet", "portsentinel", "hold").returncode == 0

    try:
        assert chain()
        for hold, want in (("0", False), ("1", True)):
            write_config(tmp_path, {"KERNEL_HOLD": hold})
            os.kill(daemon.pid, signal.SIGHUP)
            wait_until(lambda want=want: chain() == want, f"the hold chain {want}")  # type: ignore[misc]
        assert "configuration reloaded" in daemon.stderr()
    finally:
        code, err = daemon.stop()
    assert code == 0, err
    assert not chain()
