"""The one place where the response side runs external programs.

Every command is an argv list (no shell unless the argv itself names one, which only
``command.py`` does, and only in its documented way), runs with a timeout, has its output
captured, and comes back as a ``RunResult``. A non-zero exit is not an exception here: the
caller knows whether ``iptables -C`` exiting 1 means "absent" or a real failure, and logs it.

A timed-out command is killed together with everything it started (it runs in a session of
its own, so ``sh -c 'a | b'`` leaves no orphans behind). ``prefix`` is prepended to every argv;
the end-to-end tests use ``ip netns exec NS`` so that every command of a backend runs inside a
throwaway network namespace.

The service runs as an ordinary user with ambient capabilities (CAP_NET_ADMIN, CAP_NET_RAW),
which every program it starts would inherit. The firewall tools (nft, iptables, ip) need
them; the administrator's commands (KILL_RUN_CMD, UNBLOCK_RUN_CMD, MAIL_COMMAND) do not, so a
runner made with ``drop_capabilities`` starts them through a small trampoline (this Python,
``DROP_AMBIENT``) that clears the ambient set with one prctl, which the unit's system call
filter allows (capset, which util-linux's setpriv always calls, it does not), then becomes
the command: it runs as the service's user with no permitted or effective capability (the
inheritable set stays, and gives nothing: NoNewPrivileges ignores file capabilities). As
root (by hand, or COMMANDS_AS_ROOT) nothing changes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 10.0
# How much of a command's output a log line or an error message carries.
OUTPUT_LIMIT = 400
# Clears the capabilities a command would inherit (the ambient set: prctl(PR_CAP_AMBIENT,
# PR_CAP_AMBIENT_CLEAR_ALL)), then executes the command given after it.
DROP_AMBIENT = """\
import ctypes, os, sys
if ctypes.CDLL(None, use_errno=True).prctl(47, 4, 0, 0, 0) != 0:
    sys.exit("cannot clear the ambient capabilities: " + os.strerror(ctypes.get_errno()))
try:
    os.execvp(sys.argv[1], sys.argv[1:])
except OSError as exc:
    sys.stderr.write(f"cannot run {sys.argv[1]}: {exc.strerror}\\n")
    sys.exit(127)
"""
# After a kill, how long to wait for the pipes to close before giving up on the process.
_REAP_GRACE = 2.0


def truncate(text: str, limit: int = OUTPUT_LIMIT) -> str:
    """``text`` stripped and cut to ``limit`` characters, marked when cut."""
    text = text.strip()
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... [{len(text) - limit} more characters]"


@dataclass(frozen=True, slots=True)
class RunResult:
    """What happened to one command. ``returncode`` is None when it never finished."""

    argv: tuple[str, ...]
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float
    error: str | None = None  # why it did not finish: could not start, timed out

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def command(self) -> str:
        """The argv as one line a person could paste into a shell."""
        return shlex.join(self.argv)

    def describe(self) -> str:
        """A short account for logs and errors: the status and the start of the output."""
        if self.error is not None:
            return self.error
        parts = [f"exit {self.returncode}"]
        for label, text in (("stderr", self.stderr), ("stdout", self.stdout)):
            if text.strip():
                parts.append(f"{label}: {truncate(text)}")
        return "; ".join(parts)


class CommandRunner(Protocol):
    """What a backend needs to run commands; tests pass a scripted fake."""

    def run(
        self, argv: Sequence[str], *, input: str | None = None, timeout: float | None = None
    ) -> RunResult: ...


class Runner:
    """Runs argv lists with a timeout; see the module docstring."""

    def __init__(
        self,
        *,
        prefix: Sequence[str] = (),
        timeout: float = DEFAULT_TIMEOUT,
        drop_capabilities: bool = False,
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.prefix = tuple(prefix)
        self.timeout = timeout
        self.drop_capabilities = drop_capabilities

    def run(
        self, argv: Sequence[str], *, input: str | None = None, timeout: float | None = None
    ) -> RunResult:
        """Run ``argv`` (feeding ``input`` on stdin) and wait at most ``timeout`` seconds."""
        if not argv:
            raise ValueError("empty argv")
        full = (*self.prefix, *unprivileged(self.drop_capabilities), *argv)
        limit = self.timeout if timeout is None else timeout
        result = _execute(full, input, limit)
        log.debug("ran %s in %.3fs: %s", result.command, result.seconds, result.describe())
        return result


def unprivileged(drop: bool, euid: int | None = None) -> tuple[str, ...]:
    """What goes before a command so that it inherits no capability: the ``DROP_AMBIENT``
    trampoline when ``drop`` is asked for and this process is not root, else nothing."""
    if not drop or (os.geteuid() if euid is None else euid) == 0:
        return ()
    return (sys.executable, "-I", "-S", "-c", DROP_AMBIENT)


def _execute(argv: tuple[str, ...], input: str | None, timeout: float) -> RunResult:
    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            errors="replace",
            close_fds=True,
            start_new_session=True,  # its own process group, so a timeout kills all of it
        )
    except OSError as exc:
        return RunResult(argv, None, "", "", time.monotonic() - started, f"cannot run: {exc}")
    try:
        stdout, stderr = proc.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        stdout, stderr = _kill(proc)
        return RunResult(
            argv, None, stdout, stderr, time.monotonic() - started, f"timed out after {timeout}s"
        )
    return RunResult(argv, proc.returncode, stdout, stderr, time.monotonic() - started)


def _kill(proc: subprocess.Popen[str]) -> tuple[str, str]:
    """Kill the command's whole process group and collect what it wrote."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    try:
        stdout, stderr = proc.communicate(timeout=_REAP_GRACE)
    except subprocess.TimeoutExpired:  # a grandchild left the group and holds the pipes
        proc.kill()
        proc.wait()
        return "", ""
    return stdout or "", stderr or ""
