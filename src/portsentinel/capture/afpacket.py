"""Live stealth capture: one AF_PACKET socket, a memory-mapped ring and a classic BPF prefilter.

The shape comes from measurements (``shared/reference/capture-perf.md``): a per-packet
``recv`` costs 2-5 times the kernel's own work per packet and drops in bursts, while a ring
read through a ``memoryview`` needs no system call per packet. The ring is TPACKET_V3 blocks
(``RingConfig.version`` 3: a wake-up per block) or TPACKET_V2 frames (2: a wake-up per packet,
read frame by frame, ``frames.py``); the daemon reads V2, for its first probe's latency (see
``frames.py``). The BPF program (``bpf.py``) keeps established traffic in the kernel.

The socket:

- ``SOCK_DGRAM`` ("cooked"): every frame starts at the network header, so one filter and one
  decoder serve Ethernet, VLAN, tun, WireGuard and ppp alike;
- one protocol: ``ETH_P_ALL`` by default, or ``ETH_P_IP`` / ``ETH_P_IPV6``. A socket bound to
  one protocol is served after the ingress hooks, so what nftables drops at ingress (the
  daemon's bans, ``block/ingress.py``) never reaches it; an ``ETH_P_ALL`` socket is served
  before them and sees everything. The daemon reads two protocol-bound rings as one
  (``rings.py``). The filter drops other protocols by ``SKF_AD_PROTOCOL``. The socket is
  created with protocol 0 (it receives nothing) and bound only once the filter and the ring
  are in place, so no unfiltered packet ever queues;
- bound to every interface (ifindex 0): interfaces that appear later are seen without
  reopening, and a list of names is applied in user space (a socket binds to one device);
- ``PACKET_IGNORE_OUTGOING``: the host's own sends are not even copied to us.

One packet, one delivery: a frame received on a bridge port or a bond slave is handed to the
tap again on the bridge or bond device, so only interfaces without a master are counted by
default (``counted_ifindexes``); loopback is left out unless asked for. A packet from an
ifindex never seen before triggers a re-read of the interfaces (at most once a second
per ifindex).
Known limit: a VRF slave has a master but its packets are not re-delivered on the VRF device;
list such interfaces by name in ``RingConfig.interfaces``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import math
import mmap
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final

from portsentinel.capture.bpf import Instruction, validate
from portsentinel.capture.frames import (
    HEADER_BYTES,
    TPACKET_REQ,
    TPACKET_V2,
    frame_offsets,
    frame_ready,
    walk_frames,
)
from portsentinel.capture.interfaces import (
    Interface,
    counted_ifindexes,
    read_own_interfaces,
)
from portsentinel.errors import CaptureError

Handler = Callable[[memoryview, int, int, int], None]
"""Called as ``handler(ring, start, length, ifindex)``: the packet's network header and what
was captured of it are ``ring[start:start + length]``, valid only during the call (the block
goes back to the kernel right after). No slice and no timestamp are made per packet: the
reader decodes in place and keeps its own clock."""

ETH_P_ALL: Final = 0x0003
ETH_P_IP: Final = 0x0800
ETH_P_IPV6: Final = 0x86DD
SOL_PACKET: Final = 263
PACKET_RX_RING: Final = 5
PACKET_STATISTICS: Final = 6
PACKET_VERSION: Final = 10
PACKET_IGNORE_OUTGOING: Final = 23  # Linux >= 4.20
TPACKET_V3: Final = 2
SO_ATTACH_FILTER: Final = 26  # asm-generic value (x86, arm, arm64, riscv, powerpc)
TP_STATUS_KERNEL: Final = 0
TP_STATUS_USER: Final = 1
PACKET_HOST: Final = 0
IFF_UP: Final = 0x1
IFF_LOOPBACK: Final = 0x8
SYS_CLASS_NET: Final = Path("/sys/class/net")

_TPACKET_REQ3: Final = struct.Struct("=7I")
_SOCK_FILTER: Final = struct.Struct("=HBBI")
_SOCK_FPROG: Final = struct.Struct("@HP")  # length, then a pointer (padding as C lays it out)
_SOCKADDR_LL: Final = struct.Struct("=HHiHBB8s")
_STATS_V3: Final = struct.Struct("=III")
# tpacket_block_desc: version, offset_to_priv, then block_status (8), num_pkts (12),
# offset_to_first_pkt (16).
_BLOCK_STATUS: Final = struct.Struct("=I")
_BLOCK_STATUS_AT: Final = 8
_BLOCK_PACKETS: Final = struct.Struct("=II")
_BLOCK_PACKETS_AT: Final = 12
_BLOCK_SEQ: Final = struct.Struct("=Q")
_BLOCK_SEQ_AT: Final = 24
# tpacket3_hdr (48 bytes) then sockaddr_ll: tp_next_offset, (tp_sec, tp_nsec), tp_snaplen,
# (tp_len, tp_status, tp_mac), tp_net, (rest of the header, sll_family, sll_protocol),
# sll_ifindex, (sll_hatype), sll_pkttype.
_PACKET: Final = struct.Struct("=I8xI10xH24xi2xB")

_AUTO_REFRESH_INTERVAL: Final = 1.0
_NAMESPACE_CHECK_TRIES: Final = 3

_libc = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True, slots=True)
class RingConfig:
    """Ring geometry and which interfaces count.

    Buffer depth has two limits. Below the rate that fills a block within the retire timeout,
    every block is closed part-full by the timer, so the ring holds ``block_count x
    retire_timeout_ms`` of traffic whatever its byte size (measured: at 140 kpps, 128 x 4 ms
    held 70 k packets, not the 230 k its 32 MiB could). Above it, blocks fill and the ring holds
    ``ring_bytes`` / (rate x ~144 bytes per SYN slot). The defaults balance the two for 32 MiB
    of pinned kernel memory: 256 blocks of 128 KiB ride out ~1 s of reader stall at up to
    ~220 kpps (a fast ``nmap -T5`` is 45-65 kpps) and ~0.55 s at 400 kpps, the highest rate
    measured on the target machine class. The 4 ms timeout bounds how long a lone probe waits
    in an open block (the latency goal is 20 ms end to end). ``frame_size`` only sets the
    kernel's frame count in V3 (packets are packed); the snap length comes from the BPF
    program.
    """

    block_size: int = 128 * 1024
    block_count: int = 256
    frame_size: int = 2048
    retire_timeout_ms: int = 4
    interfaces: tuple[str, ...] = ()  # empty: every interface without a master
    include_loopback: bool = False
    # 3: TPACKET_V3 blocks; 2: TPACKET_V2 frames, one wake-up per packet (``frames.py``), where
    # ``frame_size`` is each packet's slot and the blocks need only be whole pages.
    version: int = 3

    def __post_init__(self) -> None:
        page = mmap.PAGESIZE
        if self.version == 2:
            if self.block_size < page or self.block_size % page:
                raise ValueError(f"block_size {self.block_size} is not a multiple of {page}")
            if self.frame_size % 16 or not HEADER_BYTES + 64 <= self.frame_size <= self.block_size:
                raise ValueError(f"frame_size {self.frame_size} does not fit a V2 ring")
            if not 2 <= self.block_count <= 65536:
                raise ValueError(f"block_count {self.block_count} is outside 2..65536")
            return
        if self.version != 3:
            raise ValueError(f"TPACKET version {self.version} is not 2 or 3")
        if self.block_size < page or self.block_size & (self.block_size - 1):
            raise ValueError(f"block_size {self.block_size} is not a power of two >= {page}")
        if not 2 <= self.block_count <= 65536:
            raise ValueError(f"block_count {self.block_count} is outside 2..65536")
        if self.frame_size < 128 or self.frame_size % 16 or self.block_size % self.frame_size:
            raise ValueError(
                f"frame_size {self.frame_size} must be a multiple of 16, >= 128, "
                f"dividing block_size {self.block_size}"
            )
        if not 1 <= self.retire_timeout_ms <= 1000:
            raise ValueError(f"retire_timeout_ms {self.retire_timeout_ms} is outside 1..1000")

    @property
    def ring_bytes(self) -> int:
        return self.block_size * self.block_count


@dataclass(frozen=True, slots=True)
class CaptureStats:
    """Cumulative counters since the ring was opened.

    ``packets`` passed the kernel filter (drops included); ``drops`` found the ring full;
    ``freeze_count`` counts the times the ring was full. ``handled`` went to the handler;
    ``not_host`` and ``not_counted_iface`` reached user space but were not handed on.
    """

    packets: int
    drops: int
    freeze_count: int
    handled: int
    not_host: int
    not_counted_iface: int


def walk_block(
    view: memoryview,
    base: int,
    handler: Handler,
    counted: set[int] | frozenset[int],
    uncounted: Callable[[int], bool],
) -> tuple[int, int, int]:
    """Hand every counted ``PACKET_HOST`` packet of the block at ``base`` to ``handler``.

    ``uncounted(ifindex)`` is asked about an ifindex outside ``counted`` and may accept it.
    Returns (handled, not host, not counted). The per-packet path builds no object.
    """
    count, offset = _BLOCK_PACKETS.unpack_from(view, base + _BLOCK_PACKETS_AT)
    offset += base
    unpack = _PACKET.unpack_from
    handled = not_host = not_counted = 0
    for _ in range(count):
        next_offset, snaplen, net, ifindex, pkttype = unpack(view, offset)
        if pkttype != PACKET_HOST:
            not_host += 1  # the filter checks it too; this is the safety net
        elif ifindex in counted or uncounted(ifindex):
            handler(view, offset + net, snaplen, ifindex)
            handled += 1
        else:
            not_counted += 1
        offset += next_offset
    return handled, not_host, not_counted


class PacketRing:
    """An open capture: call ``read_batch`` in a loop, ``stats`` now and then, ``close`` at the end.

    Needs CAP_NET_RAW. Runs in the network namespace of the calling process.
    """

    def __init__(
        self, config: RingConfig, program: Sequence[Instruction], protocol: int = ETH_P_ALL
    ) -> None:
        self._config = config
        self.protocol = protocol
        self._block = 0
        self._counted: set[int] = set()
        self._known: set[int] = set()
        self._tried: dict[int, float] = {}  # new ifindex -> when its refresh ran
        self._totals = [0, 0, 0]  # packets, drops, freeze count from PACKET_STATISTICS
        self._stats_lock = threading.Lock()
        self._handled = self._not_host = self._not_counted = 0
        self._view: memoryview | None = None
        self._map: mmap.mmap | None = None
        self._frames: list[int] = []  # V2: each frame's offset
        self._position = [0]  # V2: the next frame to read
        self._poll = select.poll()
        self._sock = _open_socket()
        try:
            self._setup(program)
        except BaseException:
            self.close()
            raise

    def _setup(self, program: Sequence[Instruction]) -> None:
        sock, config = self._sock, self._config
        v2 = config.version == 2
        version = TPACKET_V2 if v2 else TPACKET_V3
        _sockopt(sock, SOL_PACKET, PACKET_VERSION, version, f"select TPACKET_V{config.version}")
        try:
            sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
        except OSError as err:  # old kernel: the filter's PACKET_HOST test still drops them
            if err.errno != errno.ENOPROTOOPT:
                raise CaptureError(f"cannot set PACKET_IGNORE_OUTGOING: {err}") from err
        self.set_filter(program)
        if v2:
            self._frames = frame_offsets(config.block_size, config.block_count, config.frame_size)
            req = TPACKET_REQ.pack(
                config.block_size, config.block_count, config.frame_size, len(self._frames)
            )
        else:
            req = _TPACKET_REQ3.pack(
                config.block_size,
                config.block_count,
                config.frame_size,
                config.ring_bytes // config.frame_size,
                config.retire_timeout_ms,
                0,
                0,
            )
        size = f"{config.block_count} blocks of {config.block_size // 1024} KiB"
        _sockopt(sock, SOL_PACKET, PACKET_RX_RING, req, f"allocate the ring ({size})")
        try:
            self._map = mmap.mmap(
                sock.fileno(), config.ring_bytes, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE
            )
        except OSError as err:
            raise CaptureError(f"cannot map the ring ({size}): {err}") from err
        self._view = memoryview(self._map)
        self.refresh_interfaces()
        _bind_all(sock, self.protocol)
        self._poll.register(sock.fileno(), select.POLLIN | select.POLLERR)

    # --- reading -------------------------------------------------------------------------------
    def fileno(self) -> int:
        return self._sock.fileno()

    def read_batch(self, handler: Handler, timeout: float, limit: int = 0) -> int:
        """Wait up to ``timeout`` seconds for a ready block, then hand on every ready block.

        Returns how many packets went to the handler. At most one lap of the ring is read per
        call, and on a V2 ring at most ``limit`` packets when it is positive (a V3 ring reads
        its ready blocks), so the caller regains control under a flood. If
        the handler raises, its block still goes back to the kernel (the rest of that block
        is lost) and the error propagates. A negative ``timeout`` reads only what is ready,
        without a system call (not even the poll that clears a pending socket error).
        """
        view = self._view
        if view is None:
            raise CaptureError("the capture ring is closed")
        if self._frames:
            return self._read_frames(view, handler, timeout, limit)
        if not self._ready(view, self._block) and (timeout < 0 or not self._wait(view, timeout)):
            return 0
        status_at = _BLOCK_STATUS.unpack_from
        block_size, block_count = self._config.block_size, self._config.block_count
        counted, uncounted = self._counted, self._uncounted
        block, handled = self._block, 0
        try:
            for _ in range(block_count):
                base = block * block_size
                if not status_at(view, base + _BLOCK_STATUS_AT)[0] & TP_STATUS_USER:
                    break
                try:
                    done, not_host, not_counted = walk_block(
                        view, base, handler, counted, uncounted
                    )
                finally:
                    _BLOCK_STATUS.pack_into(view, base + _BLOCK_STATUS_AT, TP_STATUS_KERNEL)
                    block = (block + 1) % block_count
                handled += done
                self._not_host += not_host
                self._not_counted += not_counted
        finally:
            self._block = block
            self._handled += handled
        return handled

    def _read_frames(self, view: memoryview, handler: Handler, timeout: float, limit: int) -> int:
        """``read_batch`` on a V2 ring: every ready frame, one lap or ``limit`` at most."""
        frames, position = self._frames, self._position
        ready = frame_ready(view, frames[position[0]])
        if not ready and (timeout < 0 or not self._wait(view, timeout)):
            return 0
        handled = 0
        try:
            handled, not_host, not_counted = walk_frames(
                view, frames, position, handler,
                counted=self._counted, uncounted=self._uncounted, limit=limit,
            )  # fmt: skip
            self._not_host += not_host
            self._not_counted += not_counted
        finally:
            self._handled += handled
        return handled

    def _ready(self, view: memoryview, block: int) -> bool:
        if self._frames:
            return frame_ready(view, self._frames[self._position[0]])
        at = block * self._config.block_size + _BLOCK_STATUS_AT
        return bool(_BLOCK_STATUS.unpack_from(view, at)[0] & TP_STATUS_USER)

    def _wait(self, view: memoryview, timeout: float) -> bool:
        events = self._poll.poll(0 if timeout <= 0 else max(1, math.ceil(timeout * 1000)))
        if not events:
            return False
        if events[0][1] & select.POLLERR:  # a pending socket error; reading clears it
            self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if self._ready(view, self._block):
            return True
        return self._resync(view)

    def _resync(self, view: memoryview) -> bool:
        """Safety net: poll said ready but our block is not. Jump to the oldest ready block
        (V2: the kernel fills frames strictly in turn, so there is nothing to find)."""
        if self._frames:
            return False
        size = self._config.block_size
        ready = [
            (_BLOCK_SEQ.unpack_from(view, i * size + _BLOCK_SEQ_AT)[0], i)
            for i in range(self._config.block_count)
            if self._ready(view, i)
        ]
        if ready:
            self._block = min(ready)[1]
        return bool(ready)

    # --- interfaces ----------------------------------------------------------------------------
    def refresh_interfaces(self) -> list[Interface]:
        """Re-read the interfaces and recompute the counted set; returns what was read."""
        interfaces = read_own_interfaces()
        counted = counted_ifindexes(
            interfaces, self._config.interfaces, self._config.include_loopback
        )
        self.set_counted_interfaces(counted)
        self._known = {i.ifindex for i in interfaces}
        return interfaces

    def set_counted_interfaces(self, ifindexes: Iterable[int]) -> None:
        """Pass on packets from exactly these interfaces (until the next refresh)."""
        wanted = set(ifindexes)
        self._counted.intersection_update(wanted)  # in place: read_batch holds a reference
        self._counted.update(wanted)

    @property
    def counted_ifindexes(self) -> frozenset[int]:
        return frozenset(self._counted)

    def _uncounted(self, ifindex: int) -> bool:
        """A packet from outside the counted set: refresh once if its interface is new."""
        if ifindex in self._counted:
            return True  # counted by a refresh earlier in this batch
        if ifindex in self._known:
            return False
        now, tried = time.monotonic(), self._tried  # once a second per new ifindex, at most
        if now - tried.get(ifindex, -math.inf) < _AUTO_REFRESH_INTERVAL:
            return False
        self._tried = {i: t for i, t in tried.items() if now - t < 1.0} | {ifindex: now}
        try:
            self.refresh_interfaces()
        except (CaptureError, OSError):
            return False  # keep the previous set; the next new ifindex retries
        return ifindex in self._counted

    # --- filter and statistics -----------------------------------------------------------------
    def set_filter(self, program: Sequence[Instruction]) -> None:
        """Attach ``program`` (replacing the current one atomically), e.g. when ports change."""
        try:
            validate(program)
        except ValueError as err:
            raise CaptureError(f"invalid BPF program: {err}") from err
        code = b"".join(_SOCK_FILTER.pack(*insn) for insn in program)
        buffer = ctypes.create_string_buffer(code, len(code))
        fprog = _SOCK_FPROG.pack(len(program), ctypes.addressof(buffer))
        _sockopt(self._sock, socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog, "attach the BPF filter")

    def stats(self) -> CaptureStats:
        """The counters so far. Reading the kernel's resets them, so they are summed here,
        under a lock: the metrics endpoint reads them from its own thread, and a sum lost to
        a race would be kernel drops never reported."""
        with self._stats_lock:
            if self._sock.fileno() >= 0:
                raw = self._sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, _STATS_V3.size)
                # V2 answers tpacket_stats (packets, drops), V3 adds the freeze count.
                for i, value in enumerate(struct.unpack(f"={len(raw) // 4}I", raw)):
                    self._totals[i] += value
            packets, drops, freezes = self._totals
        return CaptureStats(
            packets, drops, freezes, self._handled, self._not_host, self._not_counted
        )

    # --- lifetime ------------------------------------------------------------------------------
    def close(self) -> None:
        """Release the ring and the socket; the statistics stay readable. Idempotent."""
        if self._sock.fileno() >= 0 and self._view is not None:
            self.stats()  # keep the last kernel counts
        if self._view is not None:
            self._view.release()
            self._view = None
        if self._map is not None:
            # A caller that kept a packet view holds the mapping; it goes when that view does.
            with contextlib.suppress(BufferError):
                self._map.close()
            self._map = None
        self._sock.close()

    def __enter__(self) -> PacketRing:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _open_socket() -> socket.socket:
    try:
        return socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, 0)
    except PermissionError as err:
        raise CaptureError(
            "live capture needs CAP_NET_RAW (run as root or grant the capability)"
        ) from err
    except OSError as err:
        raise CaptureError(f"cannot open an AF_PACKET socket: {err}") from err


def _sockopt(sock: socket.socket, level: int, name: int, value: int | bytes, what: str) -> None:
    try:
        sock.setsockopt(level, name, value)
    except OSError as err:
        raise CaptureError(f"cannot {what}: {err}") from err


def _bind_all(sock: socket.socket, protocol: int) -> None:
    """Bind to every interface (ifindex 0) for ``protocol``.

    Python's ``bind`` for AF_PACKET always looks the name up, and no name means ifindex 0,
    so this goes through libc.
    """
    address = _SOCKADDR_LL.pack(socket.AF_PACKET, socket.htons(protocol), 0, 0, 0, 0, b"")
    buffer = ctypes.create_string_buffer(address, len(address))
    if _libc.bind(sock.fileno(), buffer, len(address)) != 0:
        code = ctypes.get_errno()
        raise CaptureError(f"cannot bind the capture socket: {os.strerror(code)}")
