"""End to end: every file the program reads is a regular file of bounded size, or it says what
the file is instead (issue 15, item 5).

A FIFO given as the configuration, the defaults file, IGNORE_FILE, RESOLV_CONF or the capture
of ``replay`` once made the program wait for a writer for ever; ``/dev/zero`` made it read
until memory ran out (6.4 GB after 5 s); an IGNORE_FILE that is a symlink loop was reported as
missing and the daemon ran with nothing ignored. Each case here is given to the real command
(``run`` in a namespace lab, the other verbs as they are) under a cap on its address space, so
that a reader without a bound fails fast instead of taking the test machine's memory.

Root, iproute2 and nft (see ``netns.py``); every path is a temporary file.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

import netns
import pytest
from daemon import ACTIVE, PORTSENTINEL, Daemon, write_config

pytestmark = [pytest.mark.e2e]
_REASON = netns.unavailable() or (None if shutil.which("nft") else "needs nft")
if _REASON:
    pytestmark.append(pytest.mark.skip(reason=_REASON))

# A hung reader is killed by ``timeout`` (exit 124) long before the test's own deadline.
HANG_LIMIT = 30
# Address space of a command under test: ample for the program, small enough that reading
# /dev/zero without a bound fails in a second instead of filling the machine's memory.
ADDRESS_SPACE = 2 * 1024**3
SMALL = ("prlimit", f"--as={ADDRESS_SPACE}", "--")
BOUNDED = (*SMALL, "timeout", str(HANG_LIMIT))
DEV_ZERO = "/dev/zero"


@pytest.fixture(scope="module")
def lab() -> Iterator[netns.Lab]:
    with netns.Lab.create(prefix="psif") as built:
        yield built


def _fifo(directory: Path) -> Path:
    path = directory / "fifo"
    os.mkfifo(path)
    return path


def _loop(directory: Path) -> Path:
    """A symlink that points at itself: ELOOP on open."""
    path = directory / "loop"
    path.symlink_to(path.name)
    return path


def _special(kind: str, directory: Path) -> tuple[str, str]:
    """The path of a FIFO, /dev/zero or a symlink loop, and the words that must name it."""
    if kind == "fifo":
        return str(_fifo(directory)), "FIFO"
    if kind == "zero":
        return DEV_ZERO, "character device"
    return str(_loop(directory)), "symlink loop"


def _verb(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    """``portsentinel ARGV`` here (a verb that starts no daemon), bounded in time and memory."""
    return subprocess.run(
        [*BOUNDED, *PORTSENTINEL, *argv],
        capture_output=True,
        text=True,
        timeout=HANG_LIMIT + 30,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def _run(lab: netns.Lab, directory: Path, config: Path, *more: str) -> tuple[int, str]:
    """``portsentinel run`` in the lab's target namespace, bounded; its status and stderr."""
    argv = [*BOUNDED, *PORTSENTINEL, "run", "--config", str(config),
            "--state-dir", str(directory), *more]  # fmt: skip
    done = lab.run(lab.target, argv, check=False, timeout=HANG_LIMIT + 30)
    return done.returncode, done.stderr


def _refused(done_code: int, stderr: str, *words: str) -> None:
    assert done_code != 124, f"hung (killed after {HANG_LIMIT}s):\n{stderr}"
    assert "Traceback" not in stderr, stderr
    assert "MemoryError" not in stderr, stderr
    for word in words:
        assert word in stderr, f"{word!r} not in:\n{stderr}"


# --- the configuration file -------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["fifo", "zero", "loop"])
def test_a_configuration_that_is_not_a_regular_file_is_refused_at_once(
    lab: netns.Lab, tmp_path: Path, kind: str
) -> None:
    path, words = _special(kind, tmp_path)
    check = _verb(["config", "check", "--config", path])
    _refused(check.returncode, check.stderr, path, words)
    assert check.returncode == 2
    code, stderr = _run(lab, tmp_path, Path(path), "--mode", "stcp")
    _refused(code, stderr, path, words)
    assert code == 2
    assert ACTIVE not in stderr


def test_a_configuration_larger_than_its_cap_is_refused_by_name(tmp_path: Path) -> None:
    config = tmp_path / "huge.conf"
    with config.open("wb") as handle:
        handle.truncate(64 * 1024 * 1024)  # sparse: costs no disk
    check = _verb(["config", "check", "--config", str(config)])
    _refused(check.returncode, check.stderr, str(config), "larger than")
    assert check.returncode == 2


# --- IGNORE_FILE --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["fifo", "zero", "loop"])
def test_an_ignore_file_that_is_not_a_regular_file_stops_the_start(
    lab: netns.Lab, tmp_path: Path, kind: str
) -> None:
    """A symlink loop was "missing, nothing ignored" and the daemon ran: now an error."""
    path, words = _special(kind, tmp_path)
    config = write_config(tmp_path, {"IGNORE_FILE": path, "TCP_PORTS": "11"})
    check = _verb(["config", "check", "--config", str(config)])
    _refused(check.returncode, check.stderr, "IGNORE_FILE", path, words)
    assert check.returncode == 2
    assert "does not exist" not in check.stderr
    code, stderr = _run(lab, tmp_path, config, "--mode", "stcp")
    _refused(code, stderr, "IGNORE_FILE", path, words)
    assert code == 2
    assert ACTIVE not in stderr


@pytest.mark.parametrize("kind", ["fifo", "loop"])
def test_a_reload_onto_such_an_ignore_file_is_refused_and_the_daemon_goes_on(
    lab: netns.Lab, tmp_path: Path, kind: str
) -> None:
    """A reload runs in the loop: a FIFO there once stopped the whole daemon, and a loop
    reloaded it with nothing ignored."""
    ignore = tmp_path / "ignore"
    ignore.write_text("198.18.0.77\n")
    settings = {"IGNORE_FILE": str(ignore), "TCP_PORTS": "11", "BLOCK_TCP": "0"}
    daemon = Daemon.start(lab, tmp_path, mode="stcp", settings=settings)
    path, words = _special(kind, tmp_path)
    write_config(tmp_path, {**settings, "IGNORE_FILE": path})
    daemon.proc.send_signal(signal.SIGHUP)
    daemon.wait_for_line("the running configuration stays in force")
    stderr = daemon.stderr()
    assert "reload refused" in stderr
    for word in ("IGNORE_FILE", path, words):
        assert word in stderr, f"{word!r} not in:\n{stderr}"
    # Still serving: the next reload, onto a good file again, is taken.
    write_config(tmp_path, settings)
    daemon.proc.send_signal(signal.SIGHUP)
    daemon.wait_for_line("configuration reloaded")
    code, _stderr = daemon.stop()
    assert code == 0


# --- DEFAULTS_FILE and RESOLV_CONF ------------------------------------------------------------


@pytest.mark.parametrize("kind", ["fifo", "zero", "loop"])
def test_a_defaults_file_that_is_not_a_regular_file_is_refused(
    lab: netns.Lab, tmp_path: Path, kind: str
) -> None:
    path, words = _special(kind, tmp_path)
    config = write_config(tmp_path, {"DEFAULTS_FILE": path})
    check = _verb(["config", "check", "--config", str(config)])
    _refused(check.returncode, check.stderr, path, words)
    assert check.returncode == 2
    code, stderr = _run(lab, tmp_path, config)  # no --mode: the defaults file is read
    _refused(code, stderr, path, words)
    assert code == 2


@pytest.mark.parametrize("kind", ["fifo", "zero", "loop"])
def test_a_resolv_conf_that_is_not_a_regular_file_is_a_warning_and_the_daemon_runs(
    lab: netns.Lab, tmp_path: Path, kind: str
) -> None:
    """resolv.conf is the system's file: what is wrong with it is a warning, as a missing
    one is; but it is said, and the daemon no longer waits on it or reads it without end."""
    path, words = _special(kind, tmp_path)
    settings = {"RESOLV_CONF": path, "TCP_PORTS": "11", "BLOCK_TCP": "0"}
    directory = tmp_path / "state"
    directory.mkdir()
    write_config(directory, settings)
    config = directory / "portsentinel.conf"
    argv = [*SMALL, *PORTSENTINEL, "run", "--mode", "stcp",
            "--config", str(config), "--state-dir", str(directory)]  # fmt: skip
    with (directory / "stderr.log").open("wb") as err:
        proc = lab.start(lab.target, argv, stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=err)  # fmt: skip
    daemon = Daemon(lab, directory, proc)
    stderr = daemon.wait_for_line(ACTIVE)
    for word in ("RESOLV_CONF", path, words):
        assert word in stderr, f"{word!r} not in:\n{stderr}"
    code, stderr = daemon.stop()
    assert code == 0, stderr
    assert "MemoryError" not in stderr


# --- the capture of replay ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["fifo", "zero", "loop"])
def test_a_capture_that_is_not_a_regular_file_is_refused_at_once(tmp_path: Path, kind: str) -> None:
    path, words = _special(kind, tmp_path)
    config = write_config(tmp_path, {})
    done = _verb(["replay", "--config", str(config), "--mode", "stcp", path])
    _refused(done.returncode, done.stderr, path, words)
    assert done.returncode == 1
