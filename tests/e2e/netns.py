"""A closed two-namespace network lab for end-to-end tests (needs root and iproute2).

Topology, created fresh for every ``Lab`` with names unique to the run::

    [scanner]  veth-s   198.18.0.2/24   fd00:5e::2/64
        |      one veth pair, created inside the namespaces (it never exists in the root one)
    [target]   veth-t   198.18.0.1/24   fd00:5e::1/64

``add_namespace`` joins a further namespace (a NAT backend, say) to one of them the same way.

198.18.0.0/15 (RFC 2544 benchmarking) and fd00::/8 (ULA) are routed nowhere. No
namespace has a default route or any link to the root namespace; ``create`` checks that before
handing the lab out. Neighbour entries are static (no ARP or neighbour discovery on the wire),
so a test sees only the packets it sends. ``close`` (or leaving the ``with`` block) ends every
process still inside the lab's namespaces, by pid, then deletes the namespaces.

Typical use::

    reason = netns.unavailable()
    pytestmark = pytest.mark.skipif(reason is not None, reason=reason or "")

    with netns.Lab.create() as lab:
        lab.run(lab.scanner, ["hping3", "-S", "-c", "1", "-p", "80", lab.TARGET4])
        proc = lab.start(lab.target, [sys.executable, "receiver.py"], stdout=subprocess.PIPE)
        ...
        lab.stop(proc)

Commands run through ``ip netns exec``, which also mounts a ``/sys`` of the namespace, so a
program reading ``/sys/class/net`` there sees the namespace's own interfaces.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Any, ClassVar

_IP_TIMEOUT = 10.0


class LabError(RuntimeError):
    """The lab could not be built or is not closed off as it should be."""


def unavailable() -> str | None:
    """Why the lab cannot run here (a skip reason), or ``None`` when it can."""
    if os.geteuid() != 0:
        return "needs root: the test builds its own network namespaces"
    if shutil.which("ip") is None:
        return "needs the 'ip' command (iproute2)"
    return None


class Lab:
    """Two network namespaces, ``target`` and ``scanner``, joined by one veth pair."""

    TARGET4: ClassVar[str] = "198.18.0.1"
    SCANNER4: ClassVar[str] = "198.18.0.2"
    BROADCAST4: ClassVar[str] = "198.18.0.255"
    TARGET6: ClassVar[str] = "fd00:5e::1"
    SCANNER6: ClassVar[str] = "fd00:5e::2"
    PREFIX4: ClassVar[int] = 24
    PREFIX6: ClassVar[int] = 64
    TARGET_IF: ClassVar[str] = "veth-t"
    SCANNER_IF: ClassVar[str] = "veth-s"

    def __init__(self, target: str, scanner: str) -> None:
        self.target = target
        self.scanner = scanner
        self._processes: list[subprocess.Popen[Any]] = []
        self._created: list[str] = []
        self._links: set[str] = set()  # interfaces that ``add_namespace`` created

    # --- building and tearing down -------------------------------------------------------------
    @classmethod
    def create(cls, prefix: str = "pst") -> Lab:
        """Build the lab; on any failure, remove what was built and raise ``LabError``."""
        tag = f"{os.getpid()}-{secrets.token_hex(3)}"
        lab = cls(f"{prefix}-t-{tag}", f"{prefix}-s-{tag}")
        try:
            lab._build()
            lab.check_closed()
        except BaseException:
            lab.close()
            raise
        return lab

    def _build(self) -> None:
        for ns in (self.target, self.scanner):
            _ip("netns", "add", ns)
            self._created.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
            # No duplicate address detection or router advertisements: addresses are usable at
            # once and nothing configures itself.
            self.run(ns, ["sysctl", "-qw", *_QUIET_IPV6], check=False)
        _ip("-n", self.target, "link", "add", self.TARGET_IF, "type", "veth",
            "peer", "name", self.SCANNER_IF, "netns", self.scanner)  # fmt: skip
        for ns, dev, addr4, addr6 in (
            (self.target, self.TARGET_IF, self.TARGET4, self.TARGET6),
            (self.scanner, self.SCANNER_IF, self.SCANNER4, self.SCANNER6),
        ):
            _ip("-n", ns, "addr", "add", f"{addr4}/{self.PREFIX4}", "dev", dev)
            _ip("-n", ns, "-6", "addr", "add", f"{addr6}/{self.PREFIX6}", "dev", dev, "nodad")
            _ip("-n", ns, "link", "set", dev, "up")
        target_mac = self.link_address(self.target, self.TARGET_IF)
        scanner_mac = self.link_address(self.scanner, self.SCANNER_IF)
        self.set_neighbour(self.scanner, self.SCANNER_IF, self.TARGET4, target_mac)
        self.set_neighbour(self.scanner, self.SCANNER_IF, self.TARGET6, target_mac)
        self.set_neighbour(self.target, self.TARGET_IF, self.SCANNER4, scanner_mac)
        self.set_neighbour(self.target, self.TARGET_IF, self.SCANNER6, scanner_mac)

    def check_closed(self, extra: Iterable[str] = ()) -> None:
        """Raise ``LabError`` unless every namespace of the lab is closed off: no default route,
        and no interface but loopback, the lab's veth ends (``add_namespace``'s too) and the
        ``extra`` ones a test added inside (a bridge, say)."""
        allowed = {"lo", self.TARGET_IF, self.SCANNER_IF, *self._links, *extra}
        for ns in self._created:
            for family in ("-4", "-6"):
                if _ip("-n", ns, family, "route", "show", "default").strip():
                    raise LabError(f"namespace {ns} has a default route")
            links = {link["ifname"] for link in _ip_json("-n", ns, "link", "show")}
            if not links <= allowed:
                raise LabError(f"namespace {ns} has unexpected interfaces {links - allowed}")

    def add_namespace(
        self,
        role: str,
        *,
        near: str,
        near_if: str,
        far_if: str,
        near_addresses: Sequence[str],
        far_addresses: Sequence[str],
    ) -> str:
        """Add a namespace (a NAT backend, say) joined to namespace ``near`` by a veth pair of
        its own, built with the same care as the first two: created inside the namespaces,
        addresses given with their prefix length (``198.18.1.1/24``, ``fd00:5e:1::1/64``, the
        n-th near address paired with the n-th far one), static neighbours, no default route.
        Its name is unique to the lab; ``close`` deletes it with the rest. Returns the name."""
        prefix, _sep, tag = self.target.rpartition("-t-")
        ns = f"{prefix}-{role}-{tag}"
        _ip("netns", "add", ns)
        self._created.append(ns)
        _ip("-n", ns, "link", "set", "lo", "up")
        self.run(ns, ["sysctl", "-qw", *_QUIET_IPV6], check=False)
        _ip("-n", near, "link", "add", near_if, "type", "veth", "peer", "name", far_if,
            "netns", ns)  # fmt: skip
        self._links.update((near_if, far_if))
        for where, dev, addresses in ((near, near_if, near_addresses), (ns, far_if, far_addresses)):
            for address in addresses:
                _ip("-n", where, "addr", "add", address, "dev", dev,
                    *(["nodad"] if ":" in address else []))  # fmt: skip
            _ip("-n", where, "link", "set", dev, "up")
        near_mac, far_mac = self.link_address(near, near_if), self.link_address(ns, far_if)
        for near_address, far_address in zip(near_addresses, far_addresses, strict=True):
            self.set_neighbour(near, near_if, far_address.split("/")[0], far_mac)
            self.set_neighbour(ns, far_if, near_address.split("/")[0], near_mac)
        self.check_closed()
        return ns

    def close(self) -> None:
        """End the lab's processes (by pid) and delete its namespaces. Idempotent."""
        for proc in self._processes:
            self.stop(proc)
        self._processes.clear()
        for ns in reversed(self._created):
            for pid in self.pids(ns):  # children our processes left behind
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            subprocess.run(["ip", "netns", "del", ns], check=False, timeout=_IP_TIMEOUT)
        self._created.clear()

    def __enter__(self) -> Lab:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- running things inside -----------------------------------------------------------------
    def run(
        self,
        ns: str,
        argv: Sequence[str],
        *,
        timeout: float = 30.0,
        check: bool = True,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside namespace ``ns`` and wait for it (bounded by ``timeout``)."""
        return subprocess.run(
            ["ip", "netns", "exec", ns, *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
            input=input,
        )

    def start(self, ns: str, argv: Sequence[str], **popen: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` in the background inside ``ns``; ``close`` ends it if ``stop`` does not.

        ``ip netns exec`` execs the command, so the returned pid is the command's own.
        """
        proc: subprocess.Popen[Any] = subprocess.Popen(["ip", "netns", "exec", ns, *argv], **popen)
        self._processes.append(proc)
        return proc

    @staticmethod
    def stop(proc: subprocess.Popen[Any], grace: float = 5.0) -> int:
        """End a started process: SIGTERM, then SIGKILL after ``grace`` seconds. Its exit code."""
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(grace)
        return proc.returncode

    def pids(self, ns: str) -> list[int]:
        """The processes currently inside ``ns``."""
        done = subprocess.run(
            ["ip", "netns", "pids", ns],
            check=False,
            capture_output=True,
            text=True,
            timeout=_IP_TIMEOUT,
        )
        return [int(pid) for pid in done.stdout.split()] if done.returncode == 0 else []

    # --- small queries and changes -------------------------------------------------------------
    def ifindex(self, ns: str, dev: str) -> int:
        index: int = _ip_json("-n", ns, "link", "show", "dev", dev)[0]["ifindex"]
        return index

    def link_address(self, ns: str, dev: str) -> str:
        address: str = _ip_json("-n", ns, "link", "show", "dev", dev)[0]["address"]
        return address

    def set_neighbour(self, ns: str, dev: str, address: str, mac: str) -> None:
        _ip("-n", ns, "neigh", "replace", address, "lladdr", mac, "dev", dev, "nud", "permanent")


_QUIET_IPV6 = (
    "net.ipv6.conf.all.accept_dad=0",
    "net.ipv6.conf.default.accept_dad=0",
    "net.ipv6.conf.all.accept_ra=0",
    "net.ipv6.conf.default.accept_ra=0",
)


def _ip(*args: str) -> str:
    try:
        done = subprocess.run(
            ["ip", *args], capture_output=True, text=True, timeout=_IP_TIMEOUT, check=True
        )
    except subprocess.CalledProcessError as err:
        raise LabError(f"ip {' '.join(args)}: {err.stderr.strip()}") from err
    return done.stdout


def _ip_json(*args: str) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = json.loads(_ip("-j", *args) or "[]")
    return result
