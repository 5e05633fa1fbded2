"""The nftables backend's commands run in-process, through libnftables, without a process spawn.

A ban must reach the kernel faster than PortSentry 1.2's ~4.6 ms; starting ``nft`` costs
~3 ms of that alone. libnftables (``libnftables.so.1``, the library the ``nft`` program is a
thin shell around, shipped with it) parses and runs the same command text, so a ban becomes
one netlink transaction from this process: about 0.05 ms.

``LibnftRunner`` keeps ``runner.CommandRunner``'s contract, so ``NftablesBackend`` does not
know which way its commands go. It recognises exactly the invocations the backend makes and
runs them in-process; anything else goes to the subprocess runner it wraps:

    nft -f -                  with a script on stdin   ->  the script, text output
    nft -j list WORD...       no stdin                 ->  ``list WORD...``, JSON output

The result is the ``RunResult`` the program would have given: exit 0 or 1 (nft's failure
status), the output on stdout, the messages on stderr. The library answers synchronously (the
kernel acknowledges each netlink batch), so an element is in its set when ``run`` returns; the
``timeout`` argument therefore only applies to the subprocess path.

One libnftables context per runner, created on first use and freed by ``close``; a lock
serialises its use, since a context is not safe to share between threads. The context's
netlink socket belongs to the network namespace the process is in when it is created.

The library must never take the daemon down: when it is missing, lacks a symbol, or returns
no context, the runner logs why once and sends every command to the subprocess from then on.
A runner whose subprocess side has a ``prefix`` (``ip netns exec NS`` in the end-to-end tests)
runs every command there: its commands are meant for another namespace than this process's.
"""

from __future__ import annotations

import ctypes
import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from portsentinel.block.runner import CommandRunner, Runner, RunResult

log = logging.getLogger(__name__)

LIBRARY = "libnftables.so.1"
PROGRAM = "nft"
NFT_CTX_DEFAULT = 0
NFT_CTX_OUTPUT_JSON = 1 << 4  # libnftables.h: enum nft_ctx_output_flags
EXIT_FAILURE = 1  # what the nft program exits with when a command fails

# A word of a ``list`` command: object names, families, nothing nft would read as syntax.
_LIST_WORD = re.compile(r"[A-Za-z0-9_.:-]+")


@dataclass(frozen=True, slots=True)
class Libnft:
    """The libnftables functions this module calls, typed for ctypes. A context is a pointer,
    passed around as an int."""

    ctx_new: Callable[[int], int | None]
    ctx_free: Callable[[int], None]
    buffer_output: Callable[[int], int]
    buffer_error: Callable[[int], int]
    set_output_flags: Callable[[int, int], None]
    run_cmd: Callable[[int, bytes], int]
    output_buffer: Callable[[int], bytes | None]
    error_buffer: Callable[[int], bytes | None]


# field of Libnft -> (C symbol, return type, argument types), from libnftables.h.
_SIGNATURES: dict[str, tuple[str, Any, tuple[Any, ...]]] = {
    "ctx_new": ("nft_ctx_new", ctypes.c_void_p, (ctypes.c_uint32,)),
    "ctx_free": ("nft_ctx_free", None, (ctypes.c_void_p,)),
    "buffer_output": ("nft_ctx_buffer_output", ctypes.c_int, (ctypes.c_void_p,)),
    "buffer_error": ("nft_ctx_buffer_error", ctypes.c_int, (ctypes.c_void_p,)),
    "set_output_flags": ("nft_ctx_output_set_flags", None, (ctypes.c_void_p, ctypes.c_uint)),
    "run_cmd": ("nft_run_cmd_from_buffer", ctypes.c_int, (ctypes.c_void_p, ctypes.c_char_p)),
    "output_buffer": ("nft_ctx_get_output_buffer", ctypes.c_char_p, (ctypes.c_void_p,)),
    "error_buffer": ("nft_ctx_get_error_buffer", ctypes.c_char_p, (ctypes.c_void_p,)),
}


class LibnftError(Exception):
    """The library cannot be used here; the message says why."""


def load_library() -> Any:
    """The shared library, as ctypes loads it (raises OSError when it is not installed)."""
    return ctypes.CDLL(LIBRARY)


def bind(library: Any) -> Libnft:
    """Look up and type every function ``Libnft`` needs; a missing one makes it unusable."""
    functions = {}
    for field, (symbol, restype, argtypes) in _SIGNATURES.items():
        try:
            function = getattr(library, symbol)
        except AttributeError:
            raise LibnftError(f"{LIBRARY} has no {symbol}") from None
        function.restype = restype
        function.argtypes = argtypes
        functions[field] = function
    return Libnft(**functions)


def in_process_command(
    argv: Sequence[str], input: str | None, program: str = PROGRAM
) -> tuple[str, bool] | None:
    """``(command text, JSON output?)`` for an invocation the library can run, else None.

    Only the backend's own invocations qualify; ``list`` words are plain names, so joining them
    with spaces (as the nft program itself does) cannot change what they mean.
    """
    if len(argv) < 2 or argv[0] != program:
        return None
    if tuple(argv[1:]) == ("-f", "-"):
        if input is None or "\0" in input:
            return None
        return input, False
    words = argv[3:]
    listing = tuple(argv[1:3]) == ("-j", "list") and input is None and bool(words)
    if listing and all(_LIST_WORD.fullmatch(word) for word in words):
        return f"list {' '.join(words)}", True
    return None


class LibnftRunner:
    """A ``CommandRunner`` that runs the nftables backend's commands in-process; see the
    module docstring. ``in_process_runs`` and ``subprocess_runs`` count where commands went;
    ``fallback_reason`` says why the library is not used, once that is settled."""

    def __init__(
        self,
        fallback: CommandRunner | None = None,
        *,
        program: str = PROGRAM,
        loader: Callable[[], Any] = load_library,
    ) -> None:
        self._fallback: CommandRunner = fallback if fallback is not None else Runner()
        self._program = program
        self._loader = loader
        self._lock = threading.Lock()
        self._api: Libnft | None = None
        self._ctx: int | None = None
        self.fallback_reason: str | None = None
        self.in_process_runs = 0
        self.subprocess_runs = 0
        prefix = tuple(getattr(self._fallback, "prefix", ()))
        if prefix:
            self.fallback_reason = f"commands run through the prefix {' '.join(prefix)!r}"
            log.info("nft runs as a subprocess: %s", self.fallback_reason)

    def run(
        self, argv: Sequence[str], *, input: str | None = None, timeout: float | None = None
    ) -> RunResult:
        """Run ``argv`` in-process when the library can, else through the subprocess runner."""
        command = in_process_command(argv, input, self._program)
        if command is not None and self.fallback_reason is None:
            with self._lock:
                result = self._run_in_process(argv, *command)
            if result is not None:
                return result
        self.subprocess_runs += 1
        return self._fallback.run(argv, input=input, timeout=timeout)

    def close(self) -> None:
        """Free the context (a later command creates a new one). Idempotent."""
        with self._lock:
            self._free()

    def __enter__(self) -> LibnftRunner:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- under the lock -----------------------------------------------------------------------
    def _run_in_process(self, argv: Sequence[str], text: str, json: bool) -> RunResult | None:
        """The command's result, or None when the library failed (and is now given up)."""
        ctx = self._context()
        if ctx is None or self._api is None:
            return None
        api = self._api
        started = time.monotonic()
        try:
            api.set_output_flags(ctx, NFT_CTX_OUTPUT_JSON if json else 0)
            status = api.run_cmd(ctx, text.encode("utf-8", "replace"))
            stdout = _decode(api.output_buffer(ctx))  # reading a buffer also empties it
            stderr = _decode(api.error_buffer(ctx))
        except Exception as exc:  # a failing foreign call must not end the daemon
            self._give_up(f"{LIBRARY} failed: {exc!r}")
            return None
        self.in_process_runs += 1
        code = 0 if status == 0 else EXIT_FAILURE
        result = RunResult(tuple(argv), code, stdout, stderr, time.monotonic() - started)
        if log.isEnabledFor(logging.DEBUG):  # the hot path: build no text nobody reads
            log.debug(
                "ran %s in-process in %.6fs: %s", result.command, result.seconds, result.describe()
            )
        return result

    def _context(self) -> int | None:
        """The context, created on first use; None (and the reason logged) when it cannot be."""
        if self._ctx is not None or self.fallback_reason is not None:
            return self._ctx
        try:
            if self._api is None:
                self._api = bind(self._loader())
            self._ctx = _new_context(self._api)
        except (OSError, LibnftError) as exc:
            self._give_up(str(exc))
        except Exception as exc:  # whatever the loader or ctypes raise: never fatal
            self._give_up(f"{LIBRARY} unusable: {exc!r}")
        return self._ctx

    def _give_up(self, reason: str) -> None:
        self._free()
        self.fallback_reason = reason
        log.warning("nft runs as a subprocess from now on: %s", reason)

    def _free(self) -> None:
        if self._ctx is not None and self._api is not None:
            ctx, self._ctx = self._ctx, None
            self._api.ctx_free(ctx)


def _new_context(api: Libnft) -> int:
    """A context whose output and error messages are collected in buffers, not printed."""
    ctx = api.ctx_new(NFT_CTX_DEFAULT)
    if not ctx:
        raise LibnftError("nft_ctx_new returned no context")
    if api.buffer_output(ctx) != 0 or api.buffer_error(ctx) != 0:
        api.ctx_free(ctx)
        raise LibnftError("libnftables cannot buffer its output")
    return ctx


def _decode(raw: bytes | None) -> str:
    return "" if raw is None else raw.decode("utf-8", "replace")


def select_runner(runner: CommandRunner, nft: str = PROGRAM) -> CommandRunner:
    """The runner ``NftablesBackend`` uses: a plain local ``Runner`` running the default nft
    gets the in-process path in front of it. A runner with a prefix, a scripted one (tests),
    or another nft binary than the default are used as they are."""
    # The exact type: a subclass may change how commands run, which the library would bypass.
    if type(runner) is Runner and not runner.prefix and nft == PROGRAM:
        return LibnftRunner(runner, program=nft)
    return runner
