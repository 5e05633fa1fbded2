"""The real PortSentry 1.2 (Debian's binary) inside a ``netns.Lab``, for side-by-side figures.

Nothing is installed: ``fetch_packages`` runs ``apt-get download`` and unpacks the ``.deb``
files with ``dpkg -x`` into a cache under /tmp, so no maintainer script runs and no service
starts. The same helper fetches iperf3 for the throughput benchmark.

PortSentry 1.2 reads the compiled-in ``/etc/portsentry/portsentry.conf``, logs only through
syslog(3) to ``/dev/log``, daemonizes, and with KILL_HOSTS_DENY appends to ``/etc/hosts.deny``.
``PortSentry.start`` therefore runs it as::

    ip netns exec TARGET unshare -m --propagation private sh -c SCRIPT

and SCRIPT, inside that private mount namespace, lays an overlay over ``/etc`` and one over
``/dev`` whose upper layers live in the run directory: ``/etc/portsentry/portsentry.conf``
is our config, ``/etc/hosts.deny`` is written to the run directory's copy, and ``/dev/log``
is a link to the run directory's socket, where a small receiver (run inside the lab's target
namespace as well) writes ``epoch<TAB>datagram`` lines. The config points IGNORE_FILE,
HISTORY_FILE and BLOCKED_FILE into the run directory. The host's files are never written.

The daemon's pid comes from its own ``portsentry[PID]`` log line and is checked (command
name, network namespace) before it is signalled.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "e2e"))

import netns

CACHE = Path("/tmp/portsentinel-bench-cache")
PACKAGE = "portsentry"
BINARY = Path("usr/sbin/portsentry")
CONF = Path("etc/portsentry/portsentry.conf")
IGNORE_STATIC = Path("etc/portsentry/portsentry.ignore.static")
ACTIVE = "PortSentry is now active and listening"
DETECTION = " from host: "  # "TCP SYN/Normal scan from host: ..." and the other kinds
START_DEADLINE = 20.0
LIFETIME = 1800  # the log receiver's own bound, in seconds
PID_IN_LINE = re.compile(r"portsentry\[(\d+)\]")

# Inside the private mount namespace: overlays whose upper layers are in the run directory.
_INNER = r"""
set -eu
run=$1 bin=$2 cpu=$3 mode=$4
mount -t overlay pst-etc -o "lowerdir=/etc,upperdir=$run/etc-up,workdir=$run/etc-work" /etc
mount -t overlay pst-dev -o "lowerdir=/dev,upperdir=$run/dev-up,workdir=$run/dev-work" /dev
mkdir -p /etc/portsentry
cp "$run/portsentry.conf" /etc/portsentry/portsentry.conf
ln -sf "$run/log.sock" /dev/log
exec taskset -c "$cpu" "$bin" "-$mode"
"""

# The syslog receiver: one "epoch<TAB>datagram" line per message, flushed every 0.1 s.
_RECEIVER = r"""
import os, socket, sys, time
path, out, lifetime = sys.argv[1], sys.argv[2], float(sys.argv[3])
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(path)
s.settimeout(0.1)
end, flushed = time.monotonic() + lifetime, 0.0
with open(out, "a", buffering=1 << 20) as f:
    print("ready", flush=True)
    while time.monotonic() < end:
        try:
            data = s.recv(4096)
        except TimeoutError:
            data = b""
        if data:
            f.write(f"{time.time():.6f}\t{data.decode(errors='replace').rstrip()}\n")
        now = time.monotonic()
        if now - flushed > 0.1:
            f.flush()
            flushed = now
"""


def fetch_packages(names: Sequence[str], cache: Path = CACHE) -> Path:
    """Download ``names`` with ``apt-get download`` and unpack them (``dpkg -x``) into one
    tree under ``cache``; returns the tree's root. Nothing is installed. Idempotent: a package
    already unpacked is not fetched again (a marker file per package)."""
    root = cache / "root"
    debs = cache / "debs"
    for directory in (root, debs):
        directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        marker = cache / f"{name}.unpacked"
        if marker.exists():
            continue
        for deb in debs.glob(f"{name}_*.deb"):
            deb.unlink()
        argv = ["apt-get", "download", "-q", name]
        if subprocess.run(argv, cwd=debs, capture_output=True, check=False).returncode != 0:
            subprocess.run(["apt-get", "update", "-qq"], check=True, timeout=600)
            subprocess.run(argv, cwd=debs, capture_output=True, check=True, timeout=600)
        (deb,) = debs.glob(f"{name}_*.deb")
        subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True, timeout=120)
        marker.touch()
    return root


def fetch(cache: Path = CACHE) -> Path:
    """Debian's portsentry 1.2 unpacked under ``cache``; returns the tree's root."""
    return fetch_packages([PACKAGE], cache)


def rewrite_config(text: str, values: Mapping[str, str]) -> str:
    """``text`` (a portsentry.conf) with every active setting of a key in ``values`` removed
    and ``KEY="value"`` appended for each: 1.2 takes the first match, so there is exactly one.
    Comments and every other line stay as Debian ships them."""
    keys = "|".join(re.escape(key) for key in values)
    setting = re.compile(rf"^\s*({keys})\s*=")
    kept = [line for line in text.splitlines() if not (keys and setting.match(line))]
    kept.append("# set by bench/portsentry12.py")
    kept.extend(f'{key}="{value}"' for key, value in values.items())
    return "\n".join(kept) + "\n"


def run_settings(run: Path, overrides: Mapping[str, str]) -> dict[str, str]:
    """The settings every run gets: its files in ``run``, SCAN_TRIGGER 0 (Debian's default),
    then ``overrides`` (BLOCK_TCP, KILL_ROUTE, ...)."""
    return {
        "IGNORE_FILE": str(run / "portsentry.ignore"),
        "HISTORY_FILE": str(run / "portsentry.history"),
        "BLOCKED_FILE": str(run / "portsentry.blocked"),
        "SCAN_TRIGGER": "0",
        **overrides,
    }


def raw_socket_drops(proc_net_raw: str) -> int:
    """The ``drops`` column (the last) of ``/proc/net/raw``, summed over its sockets."""
    rows = proc_net_raw.splitlines()[1:]
    return sum(int(row.split()[-1]) for row in rows if row.strip())


class PortSentry:
    """One portsentry 1.2 daemon in the lab's target namespace and its log."""

    def __init__(self, lab: netns.Lab, run: Path, receiver: subprocess.Popen[Any]) -> None:
        self.lab = lab
        self.run = run
        self.receiver = receiver
        self.log_path = run / "syslog.log"
        self.pid = 0
        self._offset = 0
        self._detections = 0

    @classmethod
    def start(
        cls,
        lab: netns.Lab,
        run: Path,
        root: Path,
        *,
        mode: str = "atcp",
        overrides: Mapping[str, str] | None = None,
        cpu: int | str = 1,
    ) -> PortSentry:
        """Write the config, start the log receiver, start the daemon; return once it says it
        is active (RuntimeError if it does not within START_DEADLINE)."""
        for sub in ("etc-up", "etc-work", "dev-up", "dev-work"):
            (run / sub).mkdir(parents=True, exist_ok=True)
        settings = run_settings(run, overrides or {})
        (run / "portsentry.conf").write_text(rewrite_config((root / CONF).read_text(), settings))
        (run / "portsentry.ignore").write_text((root / IGNORE_STATIC).read_text())
        (run / "log.sock").unlink(missing_ok=True)  # a previous run's socket
        argv = [sys.executable, "-c", _RECEIVER, str(run / "log.sock"), str(run / "syslog.log"),
                str(LIFETIME)]  # fmt: skip
        receiver = lab.start(lab.target, argv, stdout=subprocess.PIPE, text=True)
        assert receiver.stdout is not None
        if receiver.stdout.readline().strip() != "ready":
            raise RuntimeError("the syslog receiver did not start")
        daemon = cls(lab, run, receiver)
        inner = ["unshare", "-m", "--propagation", "private", "sh", "-c", _INNER, "inner",
                 str(run), str(root / BINARY), str(cpu), mode]  # fmt: skip
        lab.run(lab.target, inner, timeout=START_DEADLINE)
        daemon.pid = daemon._wait_active()
        return daemon

    @staticmethod
    def command(
        lab: netns.Lab, run: Path, root: Path, mode: str = "atcp", cpu: int | str = 1
    ) -> str:
        """The start command as text, for the benchmark's list of commands."""
        return (
            f"ip netns exec {lab.target} unshare -m --propagation private sh -c "
            f"'<overlay /etc and /dev; /dev/log -> {run}/log.sock>; "
            f"exec taskset -c {cpu} {root / BINARY} -{mode}'"
        )

    def _wait_active(self) -> int:
        end = time.monotonic() + START_DEADLINE
        while time.monotonic() < end:
            for line in self.lines():
                if ACTIVE in line and (found := PID_IN_LINE.search(line)):
                    pid = int(found.group(1))
                    if self._is_ours(pid):
                        return pid
            time.sleep(0.05)
        raise RuntimeError(f"portsentry did not come up; log:\n{self.log_path.read_text()}")

    def _is_ours(self, pid: int) -> bool:
        """Is ``pid`` a portsentry process inside the lab's target namespace?"""
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
            inode = os.stat(f"/proc/{pid}/ns/net").st_ino
        except OSError:
            return False
        return comm == "portsentry" and inode == os.stat(f"/run/netns/{self.lab.target}").st_ino

    # --- what it logged and what the kernel counted -------------------------------------------

    def lines(self) -> list[str]:
        try:
            return self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []

    def detections(self) -> int:
        """Detection lines ("... scan from host: ...") so far; reads only what was added since
        the last call, so it stays cheap while the log grows by the million."""
        with self.log_path.open("rb") as log:
            log.seek(self._offset)
            data = log.read()
        complete = data[: data.rfind(b"\n") + 1]
        self._offset += len(complete)
        self._detections += complete.count(DETECTION.encode())
        return self._detections

    def raw_drops(self) -> int:
        """Raw-socket drops in the daemon's network namespace (``/proc/PID/net`` is its)."""
        return raw_socket_drops(Path(f"/proc/{self.pid}/net/raw").read_text())

    def cpu_ticks(self) -> int:
        """utime + stime of the daemon, in clock ticks."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])

    # --- ending it --------------------------------------------------------------------------

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM the daemon (pid checked first), SIGKILL after ``grace``; end the receiver."""
        if self.pid and self._is_ours(self.pid):
            os.kill(self.pid, signal.SIGTERM)
            end = time.monotonic() + grace
            while self._is_ours(self.pid) and time.monotonic() < end:
                time.sleep(0.05)
            if self._is_ours(self.pid):
                os.kill(self.pid, signal.SIGKILL)
        time.sleep(0.2)  # let the last datagrams arrive
        netns.Lab.stop(self.receiver)
