"""The daemons ``bench/scan_ban.py`` scans, each in a lab's target namespace, and how it sees
their bans reach the kernel.

``PortSentry12``: Debian's portsentry 1.2 (``bench/portsentry12.py``), ``-atcp`` and ``-audp``
as two processes, Debian's portsentry.conf with BLOCK_TCP/UDP=1 and an iptables KILL_ROUTE;
its detection time is the receipt of its first detection line by the syslog receiver.
``PortSentinel``: ``python -m portsentinel run --mode atcp,audp`` (it inherits PYTHONPATH)
with the embedded defaults or Debian's portsentry.conf, with or without ``--events``; its
detection time is the first event's ``time`` (with --events) or the receipt of its first
``attackalert`` line on standard error. ``BanWatch`` is ``nft monitor`` beside either: the set
element (PortSentinel) or the iptables-nft rule (1.2), each line timed on receipt.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import IO

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "e2e"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import ban_latency
import netns
import portsentry12
from daemon import ACTIVE, COVERAGE_VARIABLES, PORTSENTINEL, Daemon, write_config

from portsentinel.config import types as config_types
from portsentinel.config.schema import SETTINGS

Note = Callable[[str, str], None]  # (what, command line) for the report's list of commands

DEBIAN = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "config" / "debian"
PS_BAN = {
    "BLOCK_TCP": "1",
    "BLOCK_UDP": "1",
    "KILL_ROUTE": "/usr/sbin/iptables -I INPUT -s $TARGET$ -j DROP",
}
TRACEHOOK = Path(__file__).resolve().parent / "tracehook"
START_DEADLINE = 20.0
READY_PROBE = "198.19.255.254"  # a throw-away ban that shows the monitor is listening
TOKEN = re.compile(r"[0-9A-Fa-f:.]+(?:/\d+)?")
RULE_LINES = ("add rule", "insert rule")  # iptables -I inserts


def ban_addresses(line: str) -> list[str]:
    """The networks an ``nft monitor`` line bans: the elements after the set's name, or the
    addresses of an iptables-nft rule (``ip saddr ADDR``), as ``ip_network`` strings."""
    text = line if line.startswith(RULE_LINES) else line.split("{", 1)[-1]
    found = []
    for token in TOKEN.findall(text):
        if "." in token or ":" in token:
            with contextlib.suppress(ValueError):
                found.append(str(ipaddress.ip_network(token, strict=False)))
    return found


class BanWatch(ban_latency.ElementWatch):
    """``nft monitor`` in the target: when a ban covering an address first reached the kernel
    (IPv4 and IPv6, addresses and prefixes). ``rules``: iptables-nft rules, else set elements."""

    def __init__(self, lab: netns.Lab, *, rules: bool) -> None:
        if rules:
            self.monitor = ("nft", "monitor", "rules")
            self.prefixes = RULE_LINES
        super().__init__(lab)

    def addresses(self, line: str) -> list[str]:
        return ban_addresses(line)

    def ban_time(self, address: str) -> float | None:
        ip = ipaddress.ip_address(address)
        with self._changed:
            times = [t for net, t in self.seen.items() if ip in ipaddress.ip_network(net)]
        return min(times) if times else None

    def wait_ban(self, address: str, timeout: float) -> float | None:
        end = time.monotonic() + timeout
        while (found := self.ban_time(address)) is None:
            left = end - time.monotonic()
            if left <= 0:
                return None
            with self._changed:
                self._changed.wait(min(left, 0.05))
        return found

    def ready(self, lab: netns.Lab, add: list[str], remove: list[str]) -> None:
        """Run ``add`` (a throw-away ban of READY_PROBE) until the monitor reports it, then
        ``remove`` it until that fails, and forget it."""
        key = f"{READY_PROBE}/32"
        end = time.monotonic() + ban_latency.WAIT
        while key not in self.seen and time.monotonic() < end:
            lab.run(lab.target, add)
            self.wait_for([key], 0.2)
        if key not in self.seen:
            raise RuntimeError(f"{' '.join(self.monitor)} reported nothing")
        while lab.run(lab.target, remove, check=False).returncode == 0:
            pass
        with self._changed:
            self.seen.clear()

    def close(self) -> None:
        netns.Lab.stop(self.proc)


class LineReader:
    """A child's output stream, each line timed on receipt and copied to a file."""

    def __init__(self, stream: IO[bytes], copy: Path) -> None:
        self.lines: list[tuple[float, str]] = []
        self._stream = stream
        self._copy = copy
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        with self._copy.open("w") as out:
            for raw in self._stream:
                now = time.time()
                text = raw.decode(errors="replace").rstrip("\n")
                self.lines.append((now, text))
                out.write(f"{now:.6f}\t{text}\n")
                out.flush()

    def first(self, *needles: str) -> float | None:
        """Receipt time of the first line holding every needle."""
        for when, text in list(self.lines):
            if all(needle in text for needle in needles):
                return when
        return None


class Subject:
    """A daemon under test in a lab's target namespace, with its ban watch."""

    watch: BanWatch

    def detection(self, address: str) -> float | None:
        """The daemon's own time of its first decision about ``address``."""
        raise NotImplementedError

    def stop(self) -> list[str]:
        """Stop the daemon (by pid) and the watch; notes on anything odd."""
        raise NotImplementedError


class PortSentry12(Subject):
    def __init__(self, lab: netns.Lab, run: Path, root: Path, cpu: str, note: Note) -> None:
        lab.run(lab.target, ["iptables", "-w", "-P", "INPUT", "ACCEPT"])  # the table exists
        self.watch = BanWatch(lab, rules=True)
        self.daemons: list[portsentry12.PortSentry] = []
        try:
            rule = ["INPUT", "-s", READY_PROBE, "-j", "DROP"]
            self.watch.ready(lab, ["iptables", "-w", "-I", *rule], ["iptables", "-w", "-D", *rule])
            for mode in ("atcp", "audp"):
                where = run / mode
                where.mkdir(parents=True)
                command = portsentry12.PortSentry.command(lab, where, root, mode, cpu)
                note(f"portsentry12 -{mode}", f"{command}   # Debian's conf + {PS_BAN}")
                self.daemons.append(portsentry12.PortSentry.start(
                    lab, where, root, mode=mode, overrides=PS_BAN, cpu=cpu))  # fmt: skip
        except BaseException:
            self.stop()
            raise
        note("monitor, portsentry12", f"ip netns exec {lab.target} nft monitor rules")

    def detection(self, address: str) -> float | None:
        times = []
        for daemon in self.daemons:
            for line in daemon.lines():
                when, _tab, message = line.partition("\t")
                if portsentry12.DETECTION in message and f"{address}/" in message:
                    times.append(float(when))
                    break
        return min(times) if times else None

    def stop(self) -> list[str]:
        try:
            for daemon in self.daemons:
                daemon.stop()
        finally:
            self.watch.close()
        return []


class PortSentinel(Subject):
    def __init__(
        self,
        lab: netns.Lab,
        run: Path,
        config: str,
        *,
        events: bool,
        cpu: str,
        note: Note,
        trace: bool = False,
        src: str = "",
    ) -> None:
        path = self._config(run, config)
        argv = [*PORTSENTINEL, "run", "--mode", "atcp,audp", "--config", str(path),
                "--state-dir", str(run),
                *(["--events", str(run / "events.jsonl")] if events else [])]  # fmt: skip
        pin = ["taskset", "-c", cpu] if cpu else []
        line = f"ip netns exec {lab.target} {shlex.join([*pin, *argv])}"
        if src:
            line = f"PYTHONPATH={src} {line}"
        name = f"portsentinel {config}{' --events' if events else ''}{' (before)' if src else ''}"
        note(name, f"{line}   # {path.name}: {self.describe(config)}")
        env = {k: v for k, v in os.environ.items() if k not in COVERAGE_VARIABLES}
        if src:  # another tree's daemon (scan_ban.py --before)
            env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH", "")) if p)
        if trace:  # bench/tracehook's sitecustomize times the first ban (bench/scan_trace.py)
            env["PST_TRACE"] = str(run / "trace.json")
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (str(TRACEHOOK), env.get("PYTHONPATH", "")) if p
            )
        proc = lab.start(lab.target, [*pin, *argv], stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)  # fmt: skip
        assert proc.stderr is not None
        self.log = LineReader(proc.stderr, run / "stderr.log")
        self.daemon = Daemon(lab, run, proc)
        self.events = events
        try:
            self._wait_active()
            self.watch = BanWatch(lab, rules=False)
            element = ["inet", "portsentinel", "ban4"]
            add = ["nft", "add", "element", *element, f"{{ {READY_PROBE} timeout 5s }}"]
            self.watch.ready(
                lab, add, ["nft", "delete", "element", *element, f"{{ {READY_PROBE} }}"]
            )
        except BaseException:
            self.stop()
            raise
        note("monitor, portsentinel", f"ip netns exec {lab.target} {' '.join(self.watch.monitor)}")

    @staticmethod
    def describe(config: str) -> str:
        if config == "debian":
            return ("tests/fixtures/config/debian/portsentry.conf + its ignore.static, "
                    "BLOCK_TCP=1 BLOCK_UDP=1, every path in the run directory")  # fmt: skip
        if config == "hold":
            return "embedded defaults with KERNEL_HOLD=1, every path in the run directory"
        return "embedded defaults, every path in the run directory"

    @staticmethod
    def _config(run: Path, config: str) -> Path:
        """The embedded defaults (every path in ``run``), or Debian's portsentry.conf with the
        same paths, its static ignore list and BLOCK_TCP/UDP=1."""
        if config == "default":
            return write_config(run, {})
        if config == "hold":
            return write_config(run, {"KERNEL_HOLD": "1"})
        values = {}
        for spec in SETTINGS:  # as write_config does: every path setting, an empty file
            if spec.parse is config_types.path:
                (run / spec.key.lower()).touch()
                values[spec.key] = str(run / spec.key.lower())
        (run / "ignore_file").write_text((DEBIAN / "portsentry.ignore.static").read_text())
        values.update({"BLOCK_TCP": "1", "BLOCK_UDP": "1"})
        path = run / "portsentry.conf"
        path.write_text(
            portsentry12.rewrite_config((DEBIAN / "portsentry.conf").read_text(), values)
        )
        return path

    def _wait_active(self) -> None:
        end = time.monotonic() + START_DEADLINE
        while self.log.first(ACTIVE) is None:
            if self.daemon.proc.poll() is not None or time.monotonic() > end:
                time.sleep(0.2)  # the last lines
                raise RuntimeError(f"portsentinel did not come up:\n{self.daemon.stderr()}")
            time.sleep(0.02)

    def detection(self, address: str) -> float | None:
        if not self.events:
            return self.log.first("attackalert:", " from host: ", f"/{address} ")
        times = []
        with contextlib.suppress(FileNotFoundError):
            for line in self.daemon.events_path.read_text().splitlines():
                with contextlib.suppress(ValueError):
                    event = json.loads(line)
                    if event.get("src") == address:
                        times.append(datetime.fromisoformat(event["time"]).timestamp())
        return min(times) if times else None

    def stop(self) -> list[str]:
        notes = []
        try:
            code, stderr = self.daemon.stop()
            if code != 0:
                notes.append(f"portsentinel exit {code}")
            drops = re.search(r"kernel_drops=(\d+)", stderr)
            if drops and drops.group(1) != "0":
                notes.append(f"kernel drops {drops.group(1)}")
        finally:
            with contextlib.suppress(AttributeError):  # stopped before its watch existed
                self.watch.close()
        return notes
