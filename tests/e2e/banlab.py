"""What the ban end-to-end tests and ``bench/ban_latency.py`` share: kernel state read back,
the operator verbs, a service in the target, connections from chosen sources, nmap scans and a
raw SYN sender with forged sources.

Everything runs inside a ``netns.Lab`` (see ``netns.py``): the firewall, routes and files read
here are the lab target's own, and every packet stays between the lab's two namespaces.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import netns
from daemon import PORTSENTINEL, Daemon

from portsentinel.store.records import BanRecord
from portsentinel.store.sqlite import Store

T = TypeVar("T")

INNOCENT4 = "198.18.0.3"  # a second scanner address that never scans
INNOCENT6 = "fd00:5e::3"
SERVICE_PORT = 8080  # above 1024: the advanced modes do not watch it
CONNECT_TIMEOUT = 1.5
NMAP_TIMEOUT = 60
POLL = 0.05
NFT_TABLE = ("inet", "portsentinel")


def unavailable(tools: Sequence[str] = ("nmap", "nft", "hping3")) -> str | None:
    """Why these tests cannot run here (a skip reason), or None."""
    reason = netns.unavailable()
    missing = [tool for tool in tools if shutil.which(tool) is None]
    return reason or (f"needs {', '.join(missing)}" if missing else None)


def wait_until(check: Callable[[], T | None], what: str, deadline: float = 20.0) -> T:
    """Poll ``check`` until it returns something truthy; AssertionError at the deadline."""
    end = time.monotonic() + deadline
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > end:
            raise AssertionError(f"{what}: not within {deadline}s (last: {result!r})")
        time.sleep(POLL)


def add_scanner_address(lab: netns.Lab, address: str) -> None:
    """A further address on the scanner's veth, known to the target as a static neighbour."""
    six = ":" in address
    prefix = lab.PREFIX6 if six else lab.PREFIX4
    argv = ["ip", *(["-6"] if six else []), "addr", "add", f"{address}/{prefix}",
            "dev", lab.SCANNER_IF, *(["nodad"] if six else [])]  # fmt: skip
    lab.run(lab.scanner, argv)
    lab.set_neighbour(
        lab.target, lab.TARGET_IF, address, lab.link_address(lab.scanner, lab.SCANNER_IF)
    )


# --- kernel and file state -------------------------------------------------------------------


def nft_elements(lab: netns.Lab, family: int = 4) -> dict[str, int | None] | None:
    """The ban set's elements (address or ``net/len``) with their timeout in seconds (None:
    permanent); None when the set does not exist."""
    return nft_set(lab, "ban6" if family == 6 else "ban4")


def nft_set(lab: netns.Lab, name: str) -> dict[str, int | None] | None:
    """The elements of the table's set ``name`` with their timeout in seconds (None: none);
    None when the set does not exist."""
    done = lab.run(lab.target, ["nft", "-j", "list", "set", *NFT_TABLE, name],
                   check=False, timeout=10)  # fmt: skip
    if done.returncode != 0:
        return None
    found: dict[str, int | None] = {}
    for item in json.loads(done.stdout)["nftables"]:
        for elem in item.get("set", {}).get("elem", []):
            value, timeout = elem, None
            if isinstance(elem, dict) and "elem" in elem:
                value, timeout = elem["elem"]["val"], elem["elem"].get("timeout")
            found[_element_text(value)] = timeout
    return found


def netdev_elements(lab: netns.Lab, name: str) -> list[dict[str, Any]]:
    """The elements of the ingress table's set ``name`` as nft's JSON shows them ([] without
    the set)."""
    done = lab.run(lab.target, ["nft", "-j", "list", "set", "netdev", "portsentinel", name],
                   check=False, timeout=10)  # fmt: skip
    if done.returncode != 0:
        return []
    return [
        elem["elem"]
        for item in json.loads(done.stdout)["nftables"]
        for elem in item.get("set", {}).get("elem", [])
        if isinstance(elem, dict) and "elem" in elem
    ]


def _element_text(value: Any) -> str:
    if isinstance(value, dict) and "prefix" in value:
        return f"{value['prefix']['addr']}/{value['prefix']['len']}"
    return str(value)


def nft_ruleset(lab: netns.Lab) -> str:
    return lab.run(lab.target, ["nft", "list", "ruleset"], timeout=10).stdout


def file_lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


# --- the operator verbs ----------------------------------------------------------------------


def cli(lab: netns.Lab, daemon: Daemon, verb: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``portsentinel VERB ARGS`` in the target namespace, on the daemon's state and config
    (whether the daemon still runs or not; the verbs that only read take no config, nor does
    ``reload``: the daemon re-reads its own)."""
    readers = ("list", "why", "history", "status", "reload")
    config = [] if verb in readers else ["--config", str(daemon.directory / "portsentinel.conf")]
    argv = [*PORTSENTINEL, verb, *args, "--state-dir", str(daemon.directory), *config]
    return lab.run(lab.target, ["timeout", "30", *argv], check=False, timeout=40)


def list_bans(lab: netns.Lab, daemon: Daemon) -> list[dict[str, Any]]:
    """``portsentinel list --json``: the live bans, one dict each."""
    done = cli(lab, daemon, "list", "--json")
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def banned(lab: netns.Lab, daemon: Daemon) -> set[str]:
    return {ban["address"] for ban in list_bans(lab, daemon)}


def every_ban(daemon: Daemon) -> list[BanRecord]:
    """Every ban the store ever recorded, ended ones too (read-only use of the daemon's store)."""
    with Store.open(str(daemon.directory), offline=None) as store:
        return store.bans_between(0.0, math.inf)


# --- a service in the target and connections to it ----------------------------------------------

SERVICE = f"""
import socket, time
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::", {SERVICE_PORT}))
s.listen(64)
s.settimeout(1.0)
print("ready", flush=True)
deadline = time.monotonic() + 300
while time.monotonic() < deadline:
    try:
        s.accept()[0].close()
    except OSError:
        pass
"""

CONNECT = """
import json, socket, sys
dst, port, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
out = {}
for src in sys.argv[4:]:
    s = socket.socket(socket.AF_INET6 if ":" in src else socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.bind((src, 0))
        s.connect((dst, port))
        out[src] = "open"
    except socket.timeout:
        out[src] = "timeout"
    except OSError as exc:
        out[src] = f"error {exc.errno}"
    finally:
        s.close()
print(json.dumps(out))
"""


def start_service(lab: netns.Lab) -> subprocess.Popen[str]:
    """A TCP server in the target on SERVICE_PORT, every address of both families."""
    proc = lab.start(lab.target, [sys.executable, "-c", SERVICE], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


def connect_from(lab: netns.Lab, *sources: str) -> dict[str, str]:
    """Connect to the service from each source address in turn: ``{src: "open"|"timeout"|...}``."""
    out: dict[str, str] = {}
    for six in (False, True):
        chosen = [s for s in sources if (":" in s) == six]
        if chosen:
            dst = lab.TARGET6 if six else lab.TARGET4
            argv = [sys.executable, "-c", CONNECT, dst, str(SERVICE_PORT), str(CONNECT_TIMEOUT)]
            done = lab.run(lab.scanner, [*argv, *chosen], timeout=30)
            out.update(json.loads(done.stdout))
    return out


# --- scans ------------------------------------------------------------------------------------


def nmap_argv(lab: netns.Lab, source: str, ports: str, *, extra: Sequence[str] = ()) -> list[str]:
    """A SYN scan from ``source`` (chosen explicitly: the scanner has several addresses)."""
    six = ":" in source
    dst = lab.TARGET6 if six else lab.TARGET4
    return ["timeout", str(NMAP_TIMEOUT), "nmap", "-n", "-Pn", *(["-6"] if six else []),
            "-sS", "-T4", "--max-retries", "1", "-e", lab.SCANNER_IF, "-S", source,
            *extra, "-p", ports, dst]  # fmt: skip


def nmap_scan(lab: netns.Lab, source: str, ports: str = "1-20") -> None:
    """Scan and wait for nmap to end (it waits out the ports a ban made silent)."""
    finish(start_scan(lab, source, ports))


def start_scan(lab: netns.Lab, source: str, ports: str = "1-20") -> subprocess.Popen[str]:
    """Start a scan in the background; ``finish`` waits for it."""
    argv = nmap_argv(lab, source, ports)
    return lab.start(lab.scanner, argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen[str]) -> None:
    out, _ = proc.communicate(timeout=NMAP_TIMEOUT + 10)
    assert proc.returncode == 0, f"{proc.args!r}: exit {proc.returncode}: {out}"


def scan_until(
    lab: netns.Lab, source: str, done: Callable[[], bool], what: str, deadline: float = 20.0
) -> None:
    """Short scans from ``source`` (each on its own ports) until ``done()``: for when the
    daemon takes up to a poll period to notice a change the CLI made."""
    end = time.monotonic() + deadline
    for first in range(100, 1000, 10):
        nmap_scan(lab, source, f"{first}-{first + 9}")
        if done():
            return
        if time.monotonic() > end:
            break
    raise AssertionError(f"{what}: not within {deadline}s of scanning")


def scan_until_banned(
    lab: netns.Lab, source: str, ports: str, *, each: float, deadline: float
) -> tuple[int, float]:
    """Scan ``ports`` from ``source`` again and again, each scan given ``each`` seconds from
    its start, until ``source`` is in the IPv4 ban set: a real scanner that goes on (a flood's
    full capture ring may take none of one scan's probes). Returns (scans, seconds from the
    first scan's start to the ban seen, polled every 20 ms); AssertionError after
    ``deadline`` seconds."""
    started, scans = time.monotonic(), 0
    while time.monotonic() - started < deadline:
        scan = start_scan(lab, source, ports)
        scans += 1
        until = time.monotonic() + each
        try:
            while time.monotonic() < until:
                if source in (nft_elements(lab, 4) or {}):
                    return scans, time.monotonic() - started
                time.sleep(0.02)
        finally:
            finish(scan)
    raise AssertionError(f"{source} is not in the ban set after {scans} scans of {ports}")


# --- forged SYNs ------------------------------------------------------------------------------

# Runs in the scanner namespace: one TCP SYN per (source, port), IPv4 with IP_HDRINCL, from
# forged source addresses. ``burst DST PORTS RATE DEADLINE SRC...`` sends them all (RATE per
# second, 0: as fast as it can; never after DEADLINE seconds) and prints how many it sent;
# ``serve DST`` reads "SRC PORT" lines and answers each with the wall-clock time of its send.
RAW_SENDER = r"""
import random, socket, struct, sys, time

def checksum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF

def syn(src, dst, dport):
    s, d = socket.inet_aton(src), socket.inet_aton(dst)
    sport, seq = random.randint(1024, 65535), random.getrandbits(32)
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 5 << 4, 0x02, 1024, 0, 0)
    pseudo = s + d + struct.pack("!BBH", 0, 6, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", checksum(pseudo + tcp)) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), random.getrandbits(16), 0,
                     64, 6, 0, s, d)
    return ip + tcp

sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
if sys.argv[1] == "burst":
    dst, ports = sys.argv[2], [int(p) for p in sys.argv[3].split(",")]
    rate, deadline = float(sys.argv[4]), time.monotonic() + float(sys.argv[5])
    sent, start = 0, time.monotonic()
    for src in sys.argv[6:]:
        for port in ports:
            if time.monotonic() > deadline:
                break
            sock.sendto(syn(src, dst, port), (dst, 0))
            sent += 1
            if rate > 0:
                time.sleep(max(0.0, start + sent / rate - time.monotonic()))
    print(sent, flush=True)
else:
    dst = sys.argv[2]
    for line in sys.stdin:
        src, port = line.split()
        packet = syn(src, dst, int(port))
        now = time.time()
        sock.sendto(packet, (dst, 0))
        print(repr(now), flush=True)
"""


def burst(
    lab: netns.Lab,
    sources: Iterable[str],
    ports: Sequence[int],
    *,
    rate: float = 0.0,
    deadline: float = 30.0,
) -> subprocess.Popen[str]:
    """Start a burst of forged SYNs to the target (one per source and port); its stdout gives
    the count sent once it ends."""
    argv = ["timeout", str(deadline + 10), sys.executable, "-c", RAW_SENDER, "burst",
            lab.TARGET4, ",".join(map(str, ports)), str(rate), str(deadline), *sources]  # fmt: skip
    return lab.start(lab.scanner, argv, stdout=subprocess.PIPE, text=True)


def source_range(prefix: str, first: int, last: int) -> list[str]:
    """``source_range("198.18.0.", 100, 250)``: the addresses, in order."""
    return [f"{prefix}{n}" for n in range(first, last + 1)]
