"""RESOLVE_HOST beside the ban path: history lines wait for their name at most ``wait`` seconds
(then the address), in order, from a bounded lookup queue; the stop writes what still waits."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from portsentinel.host.resolver import Resolver
from portsentinel.model import Mode, Proto
from portsentinel.respond.names import Entry, Names
from portsentinel.store.portsentry_files import PortSentryFiles

DEADLINE = 10.0  # for what must happen soon (a busy machine is slow)
NEVER = 60.0  # a wait that no test sees the end of


class Server:
    """A name server: answers from ``names`` (a missing one: no PTR) once ``answer`` is set;
    until then every lookup waits, as on a server that never answers."""

    def __init__(self, names: dict[str, str] | None = None) -> None:
        self.names = names or {}
        self.answer = threading.Event()
        self.asked: list[str] = []

    def __call__(self, address: str) -> str:
        self.asked.append(address)
        self.answer.wait(NEVER)
        if address not in self.names:
            raise OSError("no PTR record")
        return self.names[address]


@pytest.fixture
def server() -> Iterator[Server]:
    made = Server({"198.18.0.2": "scanner.example."})
    yield made
    made.answer.set()  # no lookup thread left waiting


@pytest.fixture
def files(tmp_path: Path) -> PortSentryFiles:
    return PortSentryFiles(str(tmp_path / "history"), str(tmp_path / "blocked"))


def entry(address: str, port: int = 80, at: float = 1_700_000_000.0) -> Entry:
    return (at, address, address, port, Proto.TCP, Mode.ATCP)


def history(files: PortSentryFiles) -> list[str]:
    """The ``name/ip`` field of each history line, in order."""
    try:
        text = Path(files.history).read_text()
    except FileNotFoundError:
        return []
    return [line.split(" Host: ")[1].split(" ")[0] for line in text.splitlines()]


def blocked(files: PortSentryFiles) -> str:
    path = Path(f"{files.blocked_base}.atcp")
    return path.read_text() if path.exists() else ""


def ignore(_line: str) -> None:
    """A log nobody reads."""


def until(check: Callable[[], bool], what: str) -> None:
    end = time.monotonic() + DEADLINE
    while not check():
        assert time.monotonic() < end, f"{what}: not within {DEADLINE}s"
        time.sleep(0.01)


def test_a_line_waits_for_its_name_and_the_name_is_logged(
    server: Server, files: PortSentryFiles
) -> None:
    log: list[str] = []
    names = Names(Resolver(lookup=server), log.append, wait=NEVER)
    names.record(files, [entry("198.18.0.2")], resolve=True)
    until(lambda: server.asked == ["198.18.0.2"], "the lookup")
    assert history(files) == []  # the name may still come
    server.answer.set()
    until(lambda: history(files) == ["scanner.example/198.18.0.2"], "the line with the name")
    assert "Host: scanner.example/198.18.0.2 Port: 80 TCP Blocked" in blocked(files)
    assert log == ["attackalert: Host 198.18.0.2 is scanner.example (reverse DNS)"]
    names.close()
    assert (names.late, names.skipped) == (0, 0)


def test_a_name_that_never_comes_leaves_the_address_after_the_wait(
    server: Server, files: PortSentryFiles
) -> None:
    resolver = Resolver(lookup=server, workers=1)
    names = Names(resolver, ignore, wait=0.2)
    started = time.monotonic()
    names.record(files, [entry("198.18.0.2"), entry("198.18.0.3")], resolve=True)
    until(lambda: len(history(files)) == 2, "both lines")
    assert time.monotonic() - started < NEVER
    assert history(files) == ["198.18.0.2/198.18.0.2", "198.18.0.3/198.18.0.3"]
    assert names.late == 2
    assert server.asked == ["198.18.0.2"]  # the other waited for the thread: given up, unmade
    names.close()


def test_a_failed_lookup_writes_the_address_at_once(files: PortSentryFiles) -> None:
    def no_ptr(address: str) -> str:
        raise OSError("no PTR record")

    names = Names(Resolver(lookup=no_ptr), ignore, wait=NEVER)
    names.record(files, [entry("198.18.0.7")], resolve=True)
    until(lambda: history(files) == ["198.18.0.7/198.18.0.7"], "the line")
    assert names.late == 0
    names.close()


def test_lines_keep_the_order_of_their_bans(server: Server, files: PortSentryFiles) -> None:
    """A line whose name is known waits behind an earlier one whose name may still come."""
    resolver = Resolver(lookup=server)
    names = Names(resolver, ignore, wait=NEVER)
    names.record(files, [entry("198.18.0.2")], resolve=True)
    names.record(files, [entry("198.18.0.8", port=81)], resolve=False)
    until(lambda: server.asked == ["198.18.0.2"], "the lookup")
    assert history(files) == []
    server.answer.set()
    until(lambda: len(history(files)) == 2, "both lines")
    assert history(files) == ["scanner.example/198.18.0.2", "198.18.0.8/198.18.0.8"]
    names.close()


def test_a_lifted_ban_never_gets_its_blocked_line_back(
    server: Server, files: PortSentryFiles
) -> None:
    names = Names(Resolver(lookup=server), ignore, wait=NEVER)
    names.record(files, [entry("198.18.0.2"), entry("198.18.0.3")], resolve=True)
    names.remove_blocked(files, "198.18.0.2")  # lifted before its name came
    server.answer.set()
    until(lambda: len(history(files)) == 2, "both lines")
    names.close()
    assert "198.18.0.2 Port" not in blocked(files)
    assert "198.18.0.3/198.18.0.3 Port" in blocked(files)
    assert history(files)[0] == "scanner.example/198.18.0.2"  # the history keeps it


def test_a_full_queue_writes_the_address_without_a_lookup(
    server: Server, files: PortSentryFiles
) -> None:
    resolver = Resolver(lookup=server, workers=1, max_waiting=1)
    names = Names(resolver, ignore, wait=0.2)
    addresses = ["198.18.0.2", "198.18.0.3", "198.18.0.4"]
    names.record(files, [entry(addresses[0])], resolve=True)
    until(lambda: server.asked == addresses[:1], "the first lookup under way")
    names.record(files, [entry(a) for a in addresses[1:]], resolve=True)
    assert names.skipped == 1  # one looked up, one waits, the third is not asked for
    until(lambda: len(history(files)) == 3, "the lines")
    assert history(files) == [f"{a}/{a}" for a in addresses]
    names.close()


def test_the_stop_writes_what_waits_with_the_address(
    server: Server, files: PortSentryFiles
) -> None:
    names = Names(Resolver(lookup=server), ignore, wait=NEVER)
    names.record(files, [entry(f"198.18.0.{n}") for n in (2, 3)], resolve=True)
    names.remove_blocked(files, "198.18.0.3")
    started = time.monotonic()
    names.close()
    assert time.monotonic() - started < NEVER
    assert history(files) == ["198.18.0.2/198.18.0.2", "198.18.0.3/198.18.0.3"]
    assert "198.18.0.3 Port" not in blocked(files)
    names.record(files, [entry("198.18.0.9")], resolve=True)  # after the stop: at once
    assert history(files)[-1] == "198.18.0.9/198.18.0.9"


def test_lines_without_a_lookup_go_at_once_and_each_to_its_files(
    tmp_path: Path, server: Server
) -> None:
    """A reload may change the files; and RESOLVE_HOST turned off asks for no name."""
    old = PortSentryFiles(str(tmp_path / "old"), "")
    new = PortSentryFiles(str(tmp_path / "new"), "")
    names = Names(Resolver(lookup=server), ignore, wait=NEVER)
    names.record(old, [entry("198.18.0.5")], resolve=False)
    names.record(new, [entry("198.18.0.6")], resolve=False)
    until(lambda: history(old) != [] and history(new) != [], "both files")
    assert (history(old), history(new)) == (["198.18.0.5/198.18.0.5"], ["198.18.0.6/198.18.0.6"])
    assert server.asked == []
    names.close()


def test_a_file_that_cannot_be_written_is_said(tmp_path: Path, server: Server) -> None:
    log: list[str] = []
    broken = PortSentryFiles(str(tmp_path / "missing" / "history"), "")
    names = Names(Resolver(lookup=server), log.append, wait=NEVER)
    names.record(broken, [entry("198.18.0.5")], resolve=False)
    until(lambda: bool(log), "the error")
    assert log[0].startswith("adminalert: ERROR: cannot write the history/blocked file:")
    names.close()


def test_a_writer_that_breaks_says_so_and_later_lines_still_come(
    tmp_path: Path, server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    log: list[str] = []
    files = PortSentryFiles(str(tmp_path / "history"), "")
    names = Names(Resolver(lookup=server), log.append, wait=NEVER)
    real = names._lines
    calls: list[int] = []

    def broken_once(lines: Sequence[object]) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a bug")
        real(lines)  # type: ignore[arg-type]

    monkeypatch.setattr(names, "_lines", broken_once)
    names.record(files, [entry("198.18.0.5")], resolve=False)
    until(lambda: bool(log), "the error")
    assert log == ["adminalert: ERROR: the history file writer stopped: RuntimeError('a bug')"]
    names.record(files, [entry("198.18.0.6")], resolve=True)  # written by its caller now
    assert history(files) == ["198.18.0.6/198.18.0.6"]
    names.close()
