"""End to end: the daemon started with PortSentry 2.0's command line, in the lab.

``--stealth`` watches TCP_PORTS and UDP_PORTS (2.0's ranges) by capture, IPv4 and IPv6, and
skips a port a service listens on unless ``-S``; ``--connect`` binds TCP_PORTS and, with no
UDP_PORTS in the config (2.0's rule), no UDP port. The log lines go to standard output, as
2.0's do. Each test starts one daemon and sends a few probes: seconds each.

Root, iproute2 and nmap only (see ``netns.py``); every packet stays inside the lab.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import netns
import pytest
from banlab import add_scanner_address, nft_elements, wait_until
from daemon import ACTIVE, PORTSENTINEL, Daemon, Event, write_config

from portsentinel.store.lock import running_pid

pytestmark = [pytest.mark.e2e]
_TOOLS = [tool for tool in ("nmap", "nft", "fail2ban-regex") if shutil.which(tool) is None]
_REASON = netns.unavailable() or (f"needs {', '.join(_TOOLS)}" if _TOOLS else None)
if _REASON:
    pytestmark.append(pytest.mark.skip(reason=_REASON))

SERVICE_PORT = 11  # in TCP_PORTS: a service there makes it no probe (2.0's service check)
SETTINGS = {"TCP_PORTS": "1-20", "UDP_PORTS": "51-59", "BLOCK_TCP": "0", "BLOCK_UDP": "0"}

LISTEN = f"""
import socket, sys, time
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::", {SERVICE_PORT}))
s.listen(8)
print("ready", flush=True)
sys.stdin.read()  # until the test closes it
"""


@pytest.fixture(scope="module")
def lab() -> Iterator[netns.Lab]:
    with netns.Lab.create(prefix="ps2") as built:
        built.run(built.target, ["sysctl", "-qw", "net.ipv4.icmp_ratelimit=0"])
        yield built


@pytest.fixture
def service(lab: netns.Lab) -> Iterator[None]:
    proc = lab.start(
        lab.target, [sys.executable, "-c", LISTEN], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == b"ready"
    yield
    netns.Lab.stop(proc)


ROOT = Path(__file__).resolve().parents[2]
OURS_2_0 = ROOT / "packaging" / "fail2ban" / "filter.d" / "portsentinel-2.0.conf"
STOCK_2_0 = "[Definition]\nfailregex = ^[^ ]* Scan from: \\[<HOST>\\]\n"  # 2.0's own


def fail2ban_regex(log: Path, filter_: str | Path, tmp: Path) -> tuple[set[str], int]:
    """The hosts Debian's fail2ban-regex finds in ``log`` and the lines it misses."""
    if isinstance(filter_, str):
        (tmp / "filter.conf").write_text(filter_)
        filter_ = tmp / "filter.conf"
    done = subprocess.run(
        ["fail2ban-regex", "--print-all-matched", "-v", str(log), str(filter_)],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    counts = re.search(
        r"^Lines: \d+ lines, \d+ ignored, \d+ matched, (\d+) missed", done.stdout, re.M
    )
    assert counts is not None, done.stdout
    return set(re.findall(r"^\|\s+([0-9a-f.:]+)  \S", done.stdout, re.M)), int(counts[1])


def nmap(lab: netns.Lab, *args: str) -> None:
    argv = ["timeout", "30", "nmap", "-n", "-Pn", "-T4", "--max-retries", "1", *args]
    done = lab.run(lab.scanner, argv, check=False, timeout=40)
    assert done.returncode == 0, done.stdout + done.stderr


def seen(events: list[Event]) -> set[tuple[str, str, int, str]]:
    return {(e["src"], e["proto"], e["port"], e["kind"]) for e in events}


def test_stealth_with_2_0s_flags_detects_tcp_udp_ipv4_ipv6(
    lab: netns.Lab, tmp_path: Path, service: None
) -> None:
    flags = ("--stealth", "-m", "raw", "-i", lab.TARGET_IF, "-L", "-l", "stdout")
    unmasked = "198.18.0.3"  # a second scanner, in the ignore file without a mask
    add_scanner_address(lab, unmasked)
    (tmp_path / "ignore").write_text(f"{lab.SCANNER6}/128\n{unmasked}\n")
    settings = {**SETTINGS, "IGNORE_FILE": str(tmp_path / "ignore")}
    daemon = Daemon.start(lab, tmp_path, flags=flags, settings=settings, lines="stdout")
    try:
        nmap(lab, "-sS", "-p", f"1,{SERVICE_PORT},20", lab.TARGET4)
        nmap(lab, "-6", "-sF", "-p", "2", lab.TARGET6)
        nmap(lab, "-sU", "-p", "51", lab.TARGET4)
        nmap(lab, "-sS", "-e", lab.SCANNER_IF, "-S", unmasked, "-p", "4", lab.TARGET4)
        nmap(lab, "-sN", "-p", "5", lab.TARGET4)  # 2.0's system test: NULL and XMAS too
        nmap(lab, "-sX", "-p", "6", lab.TARGET4)
        wanted = {
            (unmasked, "tcp", 4, "SYN"),
            (lab.SCANNER4, "tcp", 1, "SYN"),
            (lab.SCANNER4, "tcp", 20, "SYN"),
            (lab.SCANNER4, "tcp", 5, "NULL"),
            (lab.SCANNER4, "tcp", 6, "XMAS"),
            (lab.SCANNER6, "tcp", 2, "FIN"),
            (lab.SCANNER4, "udp", 51, "UDP"),
        }
        events = daemon.wait_for_events(lambda ev: wanted <= seen(ev), "the five probes")
        daemon.wait_for_line("port: [6]", stream="stdout")
    finally:
        code, stderr = daemon.stop()
    assert code == 0, stderr
    assert not [e for e in events if e["port"] == SERVICE_PORT]  # a service runs there
    assert {e["mode"] for e in events} == {"stcp", "sudp"}
    out = daemon.stdout()
    assert ACTIVE in out  # 2.0's lines go to standard output ...
    assert ACTIVE not in stderr  # ... not to standard error
    assert "Portsentry is now active and listening." in out  # in 2.0's words (LOG_FORMAT unset)
    assert "PortSentry 2.0 command line: stealth mode (stcp,sudp); -m raw" in out
    assert "-L: the local check stays on" in out
    assert "attackalert:" not in out  # no 1.2 line
    scanner4, scanner6 = lab.SCANNER4, lab.SCANNER6
    expected = [
        f"Scan from: [{scanner4}] ({scanner4}) protocol: [TCP] port: [1] type: [TCP SYN/Normal "
        "scan] IP opts: [not set] ignored: [false] triggered: [true] noblock: [true] "
        "blocked: [false]",
        f"Scan from: [{scanner6}] ({scanner6}) protocol: [TCP] port: [2] type: [TCP FIN scan] "
        "IP opts: [not set] ignored: [true] triggered: [unset] noblock: [unset] blocked: [unset]",
        f"Scan from: [{scanner4}] ({scanner4}) protocol: [UDP] port: [51] type: [UDP] IP opts: "
        "[not set] ignored: [false] triggered: [true] noblock: [true] blocked: [false]",
        f"Scan from: [{unmasked}] ({unmasked}) protocol: [TCP] port: [4] type: [TCP SYN/Normal "
        "scan] IP opts: [not set] ignored: [true] triggered: [unset] noblock: [unset] "
        "blocked: [unset]",
        f"Scan from: [{scanner4}] ({scanner4}) protocol: [TCP] port: [5] type: [TCP NULL scan] "
        "IP opts: [not set] ignored: [false] triggered: [true] noblock: [true] blocked: [false]",
        f"Scan from: [{scanner4}] ({scanner4}) protocol: [TCP] port: [6] type: [TCP XMAS scan] "
        "IP opts: [not set] ignored: [false] triggered: [true] noblock: [true] blocked: [false]",
    ]
    for line in expected:
        assert line in out.splitlines(), out
    history = (tmp_path / "history_file").read_text().splitlines()
    assert {h.split(" ", 1)[1] for h in history} == {
        line for line in out.splitlines() if line.startswith("Scan from: ")
    }
    # fail2ban: 2.0's filter matches every line (the ignored source too), ours the others
    hosts, missed = fail2ban_regex(tmp_path / "history_file", STOCK_2_0, tmp_path)
    assert (hosts, missed) == ({scanner4, scanner6, unmasked}, 0)
    hosts, missed = fail2ban_regex(tmp_path / "history_file", OURS_2_0, tmp_path)
    assert (hosts, missed) == ({scanner4}, 2)


def test_disable_service_check_watches_ports_in_use(
    lab: netns.Lab, tmp_path: Path, service: None
) -> None:
    flags = ("-S", "--logoutput=stdout")
    daemon = Daemon.start(lab, tmp_path, flags=flags, settings=SETTINGS, lines="stdout")
    try:
        nmap(lab, "-sS", "-p", str(SERVICE_PORT), lab.TARGET4)
        daemon.wait_for_events(
            lambda ev: (lab.SCANNER4, "tcp", SERVICE_PORT, "SYN") in seen(ev),
            "a probe to the port in use",
        )
        # SIGHUP (2.0 dies of it) reloads, and the command line's choices stay: -S, 2.0's words
        os.kill(daemon.pid, signal.SIGHUP)
        daemon.wait_for_line("configuration reloaded", stream="stdout")
        nmap(lab, "-6", "-sS", "-p", str(SERVICE_PORT), lab.TARGET6)
        daemon.wait_for_events(
            lambda ev: (lab.SCANNER6, "tcp", SERVICE_PORT, "SYN") in seen(ev),
            "a probe to the port in use after the reload",
        )
        daemon.wait_for_line(f"Scan from: [{lab.SCANNER6}]", stream="stdout")
    finally:
        code, stderr = daemon.stop()
    assert code == 0, stderr
    assert "-S: ports a service uses are watched too" in daemon.stdout()


def test_daemon_flag_goes_to_the_background(lab: netns.Lab, tmp_path: Path) -> None:
    """``-D`` outside systemd: the command returns at once, the daemon runs on (its pid in
    the state directory's lock), logging to syslog only; it is stopped by that pid."""
    config = write_config(tmp_path, SETTINGS)
    argv = [*PORTSENTINEL, "-D", "-c", str(config), "--state-dir", str(tmp_path),
            "--events", str(tmp_path / "events.jsonl")]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "INVOCATION_ID"}
    done = subprocess.run(
        ["ip", "netns", "exec", lab.target, *argv], capture_output=True, text=True,
        timeout=30, check=False, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""  # the lines go to syslog
    pid = wait_until(lambda: running_pid(str(tmp_path)), "the daemon's pid in its lock")
    try:
        nmap(lab, "-sS", "-p", "3", lab.TARGET4)
        wait_until(
            lambda: (
                (tmp_path / "events.jsonl").exists()
                and '"port":3' in (tmp_path / "events.jsonl").read_text().replace(" ", "")
            ),
            "the probe's event from the background daemon",
        )
    finally:
        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: running_pid(str(tmp_path)) is None or None, "the daemon's end")


def _veth(lab: netns.Lab, far: str) -> None:
    """(Re)make the target's interface ``vlate-t`` to namespace ``far`` (198.18.7.0/24)."""
    lab.run(lab.target, ["ip", "link", "add", "vlate-t", "type", "veth",
                         "peer", "name", "vlate-s", "netns", far])  # fmt: skip
    for ns, dev, address in ((lab.target, "vlate-t", "198.18.7.1"), (far, "vlate-s", "198.18.7.2")):
        lab.run(ns, ["ip", "addr", "add", f"{address}/24", "dev", dev])
        lab.run(ns, ["ip", "link", "set", dev, "up"])
    lab.set_neighbour(lab.target, "vlate-t", "198.18.7.2", lab.link_address(far, "vlate-s"))
    lab.set_neighbour(far, "vlate-s", "198.18.7.1", lab.link_address(lab.target, "vlate-t"))
    lab.check_closed()


def test_a_named_interface_is_followed_as_it_comes_and_goes(lab: netns.Lab, tmp_path: Path) -> None:
    """``-i vlate-t`` before that interface exists: the daemon starts, counts nothing from the
    lab's veth, picks the interface up when it appears, and again after it was deleted and
    made anew (a new ifindex)."""
    daemon = Daemon.start(
        lab, tmp_path, flags=("--stealth", "-i", "vlate-t"), settings=SETTINGS, lines="stdout"
    )
    try:
        nmap(lab, "-sS", "-p", "7", lab.TARGET4)  # on veth-t: not a watched interface
        far = lab.add_namespace(
            "late", near=lab.target, near_if="vlate-t", far_if="vlate-s",
            near_addresses=["198.18.7.1/24"], far_addresses=["198.18.7.2/24"],
        )  # fmt: skip
        late = ["timeout", "30", "nmap", "-n", "-Pn", "-T4", "--max-retries", "1", "-sS"]
        lab.run(far, [*late, "-p", "8", "198.18.7.1"], timeout=40)
        daemon.wait_for_events(
            lambda ev: ("198.18.7.2", "tcp", 8, "SYN") in seen(ev), "the new interface's probe"
        )
        lab.run(lab.target, ["ip", "link", "del", "vlate-t"])  # its peer goes with it
        _veth(lab, far)
        lab.run(far, [*late, "-p", "9", "198.18.7.1"], timeout=40)
        events = daemon.wait_for_events(
            lambda ev: ("198.18.7.2", "tcp", 9, "SYN") in seen(ev), "the remade interface's probe"
        )
    finally:
        code, stderr = daemon.stop()
    assert code == 0, stderr
    # the probe on veth-t came first: had it been counted, its event would be there
    assert not [e for e in events if e["src"] == lab.SCANNER4], events


BANNER_CLIENT = """
import socket, sys
s = socket.create_connection((sys.argv[1], 1), timeout=5)
print(s.recv(200).decode(errors="replace"), flush=True)
"""


def test_connect_mode_as_2_0s_system_test_banner_block_and_helper(
    lab: netns.Lab, tmp_path: Path
) -> None:
    """2.0's connect scenario: TCP_PORTS="1,11" (no UDP_PORTS: no UDP, as in 2.0), a banner,
    a helper command as the block action (BLOCK_TCP 2: with BLOCK_TCP 1 the ban, applied
    first, drops the banner on its way out); the ``Scan from:`` line says it was blocked."""
    helper = tmp_path / "helper.log"
    settings = {
        "TCP_PORTS": "1,11", "BLOCK_TCP": "2", "PORT_BANNER": "** UNAUTHORIZED ACCESS **",
        "KILL_RUN_CMD": f"echo $TARGET$ $PORT$ $MODE$ >> {helper}",
    }  # fmt: skip
    daemon = Daemon.start(lab, tmp_path, flags=("--connect",), settings=settings, lines="stdout")
    try:
        answer = lab.run(lab.scanner, [sys.executable, "-c", BANNER_CLIENT, lab.TARGET4])
        assert "** UNAUTHORIZED ACCESS **" in answer.stdout
        events = daemon.wait_for_events(
            lambda ev: (lab.SCANNER4, "tcp", 1, "CONNECT") in seen(ev), "a connect to port 1"
        )
        daemon.wait_for_line(f"External command run for host: {lab.SCANNER4}", stream="stdout")
        end = time.monotonic() + 20
        while not (helper.exists() and helper.read_text()) and time.monotonic() < end:
            time.sleep(0.05)
    finally:
        code, stderr = daemon.stop()
    assert code == 0, stderr
    assert {e["mode"] for e in events} == {"tcp"}
    assert helper.read_text() == f"{lab.SCANNER4} 1 connect\n"  # the block action ran
    out = daemon.stdout()
    assert "connect mode (tcp,udp)" in out
    assert "Listen on AF_INET: TCP port: 11" in out  # 2.0's words for what was bound
    assert "Listen on AF_INET6: TCP port: 1" in out
    assert "UDP port" not in out  # nothing of UDP was bound
    scanner = lab.SCANNER4
    line = (
        f"Scan from: [{scanner}] ({scanner}) protocol: [TCP] port: [1] type: [Connect] IP opts: "
        "[unknown] ignored: [false] triggered: [true] noblock: [false] blocked: [true]"
    )
    assert line in out.splitlines(), out
    hosts, missed = fail2ban_regex(tmp_path / "history_file", OURS_2_0, tmp_path)
    assert (hosts, missed) == ({scanner}, 0)


MIGRATED = re.compile(r'^([A-Z_]+)="(.*)"$')


def test_migrated_2_0_installation_runs_and_applies_its_blocked_file(
    lab: netns.Lab, tmp_path: Path
) -> None:
    """``migrate --flags`` on a 2.0 installation (in a temporary directory), then the daemon
    on the migrated configuration: the blocked file's addresses are banned in nftables."""
    etc = tmp_path / "etc" / "portsentry"
    etc.mkdir(parents=True)
    banned = {4: "198.18.0.99", 6: "fd00:5e::99"}
    blocked = b"".join(
        (2 if v == 4 else 10).to_bytes(2, sys.byteorder) + ipaddress.ip_address(a).packed
        for v, a in banned.items()
    )
    (tmp_path / "portsentry.blocked").write_bytes(blocked)
    (tmp_path / "portsentry.ignore").write_text("127.0.0.1/32\n")
    (etc / "portsentry.conf").write_text(
        f'TCP_PORTS="1-20"\nUDP_PORTS="51-59"\nBLOCK_TCP="1"\nBLOCK_UDP="1"\n'
        f'IGNORE_FILE="{tmp_path}/portsentry.ignore"\n'
        f'BLOCKED_FILE="{tmp_path}/portsentry.blocked"\n'
        f'HISTORY_FILE="{tmp_path}/portsentry.history"\n'
        'KILL_ROUTE="/sbin/iptables -I INPUT -s $TARGET$ -j DROP"\n'
    )
    output = tmp_path / "portsentinel" / "portsentinel.conf"
    state = tmp_path / "state"
    argv = [sys.executable, "-m", "portsentinel", "migrate", "--from", str(etc),
            "--output", str(output), "--state-dir", str(state), "--flags=--stealth"]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert f"Bans recorded in {state}: 2 new, 0 there already" in done.stdout
    settings = {
        m[1]: m[2] for line in output.read_text().splitlines() if (m := MIGRATED.match(line))
    }
    assert settings["LOG_FORMAT"] == "2.0"
    assert "KILL_ROUTE" not in settings
    daemon = Daemon.start(lab, tmp_path / "run", mode=None, settings=settings, state_dir=state)
    try:

        def applied() -> bool | None:
            sets = {v: nft_elements(lab, v) or {} for v in banned}
            return all(a in sets[v] for v, a in banned.items()) or None

        wait_until(applied, "the blocked file's addresses banned")
    finally:
        code, stderr = daemon.stop()
    assert code == 0, stderr
    assert "Portsentry is now active and listening." in stderr  # LOG_FORMAT 2.0, set


def test_scan_trigger_in_2_0s_words(lab: netns.Lab, tmp_path: Path) -> None:
    """SCAN_TRIGGER 3: the first two probes are counted and said (triggered: [false]), the
    third triggers; TCP and UDP count together, as in 2.0."""
    settings = {**SETTINGS, "SCAN_TRIGGER": "3"}
    daemon = Daemon.start(lab, tmp_path, flags=("--stealth",), settings=settings, lines="stdout")
    try:
        for args in (("-sS", "-p", "4"), ("-sU", "-p", "52"), ("-sS", "-p", "5")):
            nmap(lab, *args, lab.TARGET4)
            port = args[-1]
            daemon.wait_for_line(f"port: [{port}]", stream="stdout")
    finally:
        code, stderr = daemon.stop()
    assert code == 0, stderr
    lines = [line for line in daemon.stdout().splitlines() if line.startswith("Scan from: ")]
    fields = [line.split(" ignored: ", 1)[1] for line in lines]
    assert fields == [
        "[false] triggered: [false] noblock: [unset] blocked: [unset]",
        "[false] triggered: [false] noblock: [unset] blocked: [unset]",
        "[false] triggered: [true] noblock: [true] blocked: [false]",
    ]
    assert "protocol: [UDP] port: [52]" in lines[1]
