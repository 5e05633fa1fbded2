"""The live daemon inside a ``netns.Lab``, and a scriptable network peer to talk to it.

``Daemon.start`` runs ``portsentinel run`` (or PortSentry's own ``portsentinel -atcp -audp``)
in the lab's target namespace with a config file written to a temporary directory: every path
setting points into that directory, the state directory and the events file too, and standard
error goes to ``DIR/stderr.log``. Nothing of the host's own configuration is read or written.
It returns once the daemon says "now active and listening". Events are read back from the
JSON Lines file; conditions on them are awaited with a deadline (polled, never a fixed sleep).

``Peer`` is a small Python process inside one namespace that serves, connects and queries on
command (JSON lines on stdin and stdout): the benign traffic of a real host, on demand.

Every packet stays inside the lab (see ``netns.py``).
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import netns

from portsentinel.config import types as config_types
from portsentinel.config.schema import SETTINGS

ACTIVE = "now active and listening"
START_DEADLINE = 20.0
EVENT_DEADLINE = 20.0
STOP_GRACE = 10.0
POLL = 0.02

Event = dict[str, Any]

# The daemon's command in front of its options; argv[1:] of ``portsentinel``.
PORTSENTINEL = (sys.executable, "-m", "portsentinel")

# What makes a child Python measure its own coverage (CI: pyproject's patch = subprocess).
COVERAGE_VARIABLES = ("COVERAGE_PROCESS_CONFIG", "COVERAGE_PROCESS_START")


def write_config(directory: Path, settings: Mapping[str, str]) -> Path:
    """A config whose every path lies in ``directory`` (the files exist, empty), plus
    ``settings``; detection is immediate (SCAN_TRIGGER 0) unless ``settings`` say otherwise."""
    values = {"SCAN_TRIGGER": "0"}
    for spec in SETTINGS:  # every path setting there is, today's and tomorrow's
        if spec.parse is config_types.path:
            (directory / spec.key.lower()).touch()
            values[spec.key] = str(directory / spec.key.lower())
    values.update(settings)
    path = directory / "portsentinel.conf"
    path.write_text("".join(f'{key}="{value}"\n' for key, value in values.items()))
    return path


class Daemon:
    """One ``portsentinel`` process in the lab's target namespace and the files it writes."""

    def __init__(self, lab: netns.Lab, directory: Path, proc: subprocess.Popen[bytes]) -> None:
        self.lab = lab
        self.directory = directory
        self.proc = proc
        self.events_path = directory / "events.jsonl"
        self.stderr_path = directory / "stderr.log"
        self.stdout_path = directory / "stdout.log"

    @classmethod
    def start(
        cls,
        lab: netns.Lab,
        directory: Path,
        *,
        mode: str | None = "atcp,audp",
        flags: Sequence[str] = (),
        settings: Mapping[str, str] | None = None,
        dry_run: bool = False,
        state_dir: Path | None = None,
        wait: bool = True,
        events: bool = True,
        measured: bool = True,
        wrapper: Sequence[str] = (),
        lines: str = "stderr",
        ns: str | None = None,
    ) -> Daemon:
        """Start the daemon: ``run --mode MODE`` or, with ``flags`` (``-atcp``, ``-audp``),
        PortSentry's invocation, flags first and options after. The state directory is
        ``directory`` unless ``state_dir`` names another (a second daemon on the same state).
        With ``wait``, return once it is active (fail if it exits first). Without ``events``
        there is no ``--events`` stream, as in the packaged service. A load test, which judges
        the daemon's speed and memory, starts it with ``measured=False``: outside coverage,
        whose tracer would make it several times slower and bigger than it is. ``wrapper``
        goes in front of the command (it must exec it, so the pid stays the daemon's): a
        private mount namespace with the lab's own ``/etc/resolv.conf``, say. ``lines`` names
        the stream the daemon's log lines go to (``stdout`` with PortSentry 2.0's flags).
        ``ns``: the namespace it runs in (the lab's target unless given)."""
        directory.mkdir(parents=True, exist_ok=True)
        config = write_config(directory, settings or {})
        verb = list(flags) if flags else ["run", *(["--mode", mode] if mode else [])]
        argv = [
            *wrapper,
            *PORTSENTINEL,
            *verb,
            "--config", str(config),
            "--state-dir", str(state_dir or directory),
            *(["--events", str(directory / "events.jsonl")] if events else []),
            *(["--dry-run"] if dry_run else []),
        ]  # fmt: skip
        env = dict(os.environ)
        if not measured:
            for name in COVERAGE_VARIABLES:
                env.pop(name, None)
        with (
            (directory / "stderr.log").open("wb") as err,
            (directory / "stdout.log").open("wb") as out,
        ):
            proc = lab.start(ns or lab.target, argv, stdin=subprocess.DEVNULL,
                             stdout=out, stderr=err, env=env)  # fmt: skip
        daemon = cls(lab, directory, proc)
        if wait:
            daemon.wait_for_line(ACTIVE, START_DEADLINE, stream=lines)
        return daemon

    @property
    def pid(self) -> int:
        return self.proc.pid

    # --- what it wrote ------------------------------------------------------------------------

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def events(self) -> list[Event]:
        """Every complete event line written so far."""
        try:
            text = self.events_path.read_text()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines(keepends=True) if line.endswith("\n")]

    def wait_for_line(
        self, text: str, deadline: float = START_DEADLINE, *, stream: str = "stderr"
    ) -> str:
        """Wait until standard error (or ``stream="stdout"``) holds ``text``; AssertionError
        if it exits or time runs out."""
        read = self.stdout if stream == "stdout" else self.stderr
        end = time.monotonic() + deadline
        while text not in (stderr := read()):
            if self.proc.poll() is not None:
                stderr = read()
                if text in stderr:
                    break
                raise AssertionError(
                    f"daemon exited ({self.proc.returncode}) before {text!r}:\n{stderr}"
                    f"\n{self.stderr() if stream == 'stdout' else ''}"
                )
            if time.monotonic() > end:
                raise AssertionError(f"no {text!r} within {deadline}s:\n{stderr}")
            time.sleep(POLL)
        return stderr

    def wait_for_events(
        self,
        done: Callable[[list[Event]], bool],
        what: str,
        deadline: float = EVENT_DEADLINE,
        *,
        check: bool = True,
    ) -> list[Event]:
        """Poll the events until ``done(events)``; at the deadline fail (or, without ``check``,
        return what there is)."""
        end = time.monotonic() + deadline
        while not done(events := self.events()):
            if time.monotonic() > end or self.proc.poll() is not None:
                if not check:
                    return events
                raise AssertionError(f"never saw {what} within {deadline}s; events: {events}")
            time.sleep(POLL)
        return events

    # --- ending it ----------------------------------------------------------------------------

    def wait_exit(self, deadline: float = STOP_GRACE) -> tuple[int, str]:
        """Wait for the process to end by itself: its exit code and standard error."""
        code = self.proc.wait(deadline)
        return code, self.stderr()

    def stop(self, signum: int = signal.SIGTERM, grace: float = STOP_GRACE) -> tuple[int, str]:
        """Signal the daemon by pid and wait: its exit code and standard error. A daemon that
        ignores the signal is killed and reported."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signum)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(grace)
                raise AssertionError(
                    f"daemon ignored signal {signum} for {grace}s:\n{self.stderr()}"
                ) from None
        return self.proc.returncode, self.stderr()


def statistics(stderr: str) -> dict[str, int]:
    """The counters of the daemon's ``adminalert: statistics:`` shutdown line."""
    marker = "adminalert: statistics: "
    lines = [line for line in stderr.splitlines() if line.startswith(marker)]
    if not lines:
        return {}
    pairs = (item.split("=", 1) for item in lines[-1][len(marker) :].split())
    return {key: int(value) for key, value in pairs}


def quick_icmp(lab: netns.Lab) -> None:
    """Lift the target's ICMP error rate limit, so ``nmap -sU`` learns "closed" at once."""
    lab.run(lab.target, ["sysctl", "-qw", "net.ipv4.icmp_ratelimit=0", "net.ipv6.icmp.ratelimit=0"])


# --- nmap scans, each on its own ports -------------------------------------------------------

NMAP_TIMEOUT = 60
NMAP = ("nmap", "-n", "-Pn", "--max-retries", "1", "-T4")


@dataclass(frozen=True)
class Scan:
    """One nmap scan type on its own small port range, so its events are told apart by port.
    The ranges stay below 1024 and off the advanced modes' default excludes."""

    flag: str
    proto: str
    ports: range
    stealth_kind: str  # the event kind in the stealth modes; bound modes say CONNECT

    @property
    def port_spec(self) -> str:
        return f"{self.ports[0]}-{self.ports[-1]}"


SCANS = (
    Scan("-sS", "tcp", range(1, 10), "SYN"),
    Scan("-sT", "tcp", range(11, 20), "SYN"),
    Scan("-sF", "tcp", range(21, 30), "FIN"),
    Scan("-sN", "tcp", range(31, 40), "NULL"),
    Scan("-sX", "tcp", range(41, 50), "XMAS"),
    Scan("-sU", "udp", range(51, 60), "UDP"),
)


@dataclass(frozen=True)
class Family:
    name: str
    nmap: tuple[str, ...]
    src: str
    dst: str


FAMILIES = (
    Family("ipv4", (), netns.Lab.SCANNER4, netns.Lab.TARGET4),
    Family("ipv6", ("-6",), netns.Lab.SCANNER6, netns.Lab.TARGET6),
)


def scans_for(mode: str) -> tuple[Scan, ...]:
    """The scans one mode can see: every one for the stealth modes, ``-sT`` for bound tcp."""
    proto = "udp" if mode.endswith("udp") else "tcp"
    if mode == "tcp":
        return tuple(s for s in SCANS if s.flag == "-sT")
    return tuple(s for s in SCANS if s.proto == proto)


def expected_kind(mode: str, scan: Scan) -> str:
    return "CONNECT" if mode in ("tcp", "udp") else scan.stealth_kind


def scan_events(events: Iterable[Event], scan: Scan, family: Family) -> list[Event]:
    """The events a scan caused: its protocol and ports, from its family's scanner."""
    return [
        e for e in events
        if e["src"] == family.src and e["proto"] == scan.proto and e["port"] in scan.ports
    ]  # fmt: skip


def run_scans(lab: netns.Lab, jobs: Iterable[tuple[Scan, Family]]) -> dict[tuple[str, str], float]:
    """Run the scans at once from the scanner namespace; the wall-clock start of each, keyed
    by (flag, family name). AssertionError if an nmap fails."""
    running = []
    for scan, family in jobs:
        argv = ["timeout", str(NMAP_TIMEOUT), *NMAP, *family.nmap, scan.flag,
                "-p", scan.port_spec, family.dst]  # fmt: skip
        started = time.time()
        proc = lab.start(lab.scanner, argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        running.append(((scan.flag, family.name), started, proc))
    failures = []
    for key, _started, proc in running:
        out, _ = proc.communicate(timeout=NMAP_TIMEOUT + 10)
        if proc.returncode != 0:
            failures.append(f"nmap {key}: exit {proc.returncode}: {out.decode(errors='replace')}")
    assert not failures, "\n".join(failures)
    return {key: started for key, started, _proc in running}


def first_alert_delay(events: Iterable[Event], started: float) -> float | None:
    """Seconds from a scan's start to its first event (the packet's time), or None."""
    times = [datetime.fromisoformat(e["time"]).timestamp() for e in events]
    return min(times) - started if times else None


# --- a scriptable peer --------------------------------------------------------------------------

# Runs inside a namespace: one JSON command per stdin line, one JSON answer per stdout line.
# Servers run in daemon threads; it exits when stdin closes (or after a safety lifetime).
_AGENT = r"""
import json, socket, sys, threading, time

counters = {"accepted": 0, "echoed": 0, "late_sent": 0}
lock = threading.Lock()

def count(name):
    with lock:
        counters[name] += 1

def family(host):
    return socket.AF_INET6 if ":" in host else socket.AF_INET

def sock_for(host, kind):
    s = socket.socket(family(host), kind)
    if ":" in host:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    return s

def echo_once(conn):
    with conn:
        conn.settimeout(5)
        try:
            data = conn.recv(1024)
            if data:
                conn.sendall(data)
        except OSError:
            pass
    count("accepted")

def tcp_listener(host, port, backlog=16):
    s = sock_for(host, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port))
    s.listen(backlog)
    return s

def serve_forever(s):
    while True:
        conn, _ = s.accept()
        threading.Thread(target=echo_once, args=(conn,), daemon=True).start()

def tcp_serve(host, port):
    s = tcp_listener(host, port)
    threading.Thread(target=serve_forever, args=(s,), daemon=True).start()
    return {"port": s.getsockname()[1]}

def accept_one(s, timeout):
    s.settimeout(timeout)
    try:
        conn, _ = s.accept()
        echo_once(conn)
    except OSError:
        pass
    s.close()

def tcp_listen_once(host, timeout=10.0):
    s = tcp_listener(host, 0, 1)
    threading.Thread(target=accept_one, args=(s, timeout), daemon=True).start()
    return {"port": s.getsockname()[1]}

def tcp_connect(host, port, count=1, timeout=5.0):
    ok, refused, errors = 0, 0, []
    for _ in range(count):
        s = sock_for(host, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.connect((host, port))
            s.sendall(b"hello")
            ok += s.recv(1024) == b"hello"
        except ConnectionRefusedError:
            refused += 1
        except OSError as exc:
            errors.append(str(exc))
        finally:
            s.close()
    return {"ok": ok, "refused": refused, "errors": errors}

def udp_responder(s, delay):
    while True:
        data, peer = s.recvfrom(2048)
        if data.startswith(b"late"):
            def answer(data=data, peer=peer):
                s.sendto(data, peer)
                count("late_sent")
            threading.Timer(delay, answer).start()
        else:
            s.sendto(data, peer)
            count("echoed")

def udp_serve(host, port, delay=0.3):
    s = sock_for(host, socket.SOCK_DGRAM)
    s.bind((host, port))
    threading.Thread(target=udp_responder, args=(s, delay), daemon=True).start()
    return {"port": s.getsockname()[1]}

def udp_query(host, port, payload="query", wait=True, timeout=5.0):
    s = sock_for(host, socket.SOCK_DGRAM)
    s.settimeout(timeout)
    try:
        s.sendto(payload.encode(), (host, port))
        sport = s.getsockname()[1]
        reply = False
        if wait:
            reply = s.recvfrom(2048)[0] == payload.encode()
    finally:
        s.close()
    return {"sport": sport, "reply": reply}

def stats():
    with lock:
        return dict(counters)

OPS = {f.__name__: f for f in (tcp_serve, tcp_listen_once, tcp_connect, udp_serve, udp_query,
                               stats)}
threading.Timer(float(sys.argv[1]), lambda: __import__("os")._exit(0)).start()
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    request = json.loads(line)
    try:
        answer = OPS[request.pop("op")](**request)
    except Exception as exc:
        answer = {"error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(answer), flush=True)
__import__("os")._exit(0)
"""


class Peer:
    """A scriptable peer in one namespace: ``call("tcp_connect", host=..., port=...)``.

    Operations: ``tcp_serve(host, port)``, ``tcp_listen_once(host)`` (an ephemeral port that
    accepts one connection, as an active-mode FTP client opens), ``tcp_connect(host, port,
    count)``, ``udp_serve(host, port, delay)`` (echoes; a payload starting with ``late`` is
    answered after ``delay`` seconds), ``udp_query(host, port, payload, wait)`` (from an
    ephemeral port; without ``wait`` the socket is closed at once), ``stats()``.
    """

    LIFETIME = 600.0

    def __init__(self, lab: netns.Lab, ns: str) -> None:
        self.proc = lab.start(
            ns,
            [sys.executable, "-c", _AGENT, str(self.LIFETIME)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert self.proc.stdout is not None
        assert self.proc.stdin is not None
        self._out = self.proc.stdout
        self._in = self.proc.stdin
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._out, selectors.EVENT_READ)
        self._answer()  # {"ready": true}

    def call(self, op: str, deadline: float = 30.0, **args: Any) -> dict[str, Any]:
        """Run one operation and return its answer; AssertionError on an error answer."""
        self._in.write((json.dumps({"op": op, **args}) + "\n").encode())
        self._in.flush()
        answer = self._answer(deadline)
        if "error" in answer:
            raise AssertionError(f"peer {op}({args}): {answer['error']}")
        return answer

    def _answer(self, deadline: float = 30.0) -> dict[str, Any]:
        if not self._selector.select(deadline):
            raise AssertionError(f"peer gave no answer within {deadline}s")
        line = self._out.readline()
        if not line:
            raise AssertionError(f"peer exited ({self.proc.wait(5)})")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def close(self) -> None:
        self._selector.close()
        self._in.close()
        netns.Lab.stop(self.proc)
