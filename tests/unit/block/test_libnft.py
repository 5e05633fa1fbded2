"""The in-process nft runner without root: which invocations it takes over, what it returns,
and how it falls back to the subprocess. The library is a stub here (the real one runs in
tests/e2e/test_block_libnft_live.py); the subprocess side is the scripted ``FakeRunner``."""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from portsentinel.block.base import BanSpec
from portsentinel.block.libnft import (
    NFT_CTX_OUTPUT_JSON,
    LibnftRunner,
    bind,
    in_process_command,
    select_runner,
)
from portsentinel.block.nftables import NftablesBackend
from portsentinel.block.runner import Runner, RunResult
from unit.block.block_fakes import FakeRunner

APPLY = ("nft", "-f", "-")
LIST_TABLE = ("nft", "-j", "list", "table", "inet", "portsentinel")
SCRIPT = "add element inet portsentinel ban4 { 198.18.0.2 timeout 3600s }\n"
LISTED = '{"nftables": [{"table": {"family": "inet", "name": "portsentinel"}}]}\n'

Reply = Callable[[str, int], tuple[int, bytes, bytes]]


def succeed(_text: str, _flags: int) -> tuple[int, bytes, bytes]:
    return 0, b"", b""


class StubLibrary:
    """Stands in for ``libnftables.so.1``: each C function a plain Python function attribute
    (so ``bind`` can set ``restype``/``argtypes`` on it, as on a ctypes function). Records the
    commands and contexts; ``reply`` decides each command's status, output and errors, which
    stay in the context's buffers until read, as in the library."""

    def __init__(
        self,
        *,
        reply: Reply = succeed,
        missing: Sequence[str] = (),
        null_context: bool = False,
        buffer_status: int = 0,
    ) -> None:
        self.reply = reply
        self.null_context = null_context
        self.buffer_status = buffer_status
        self.made: list[int] = []
        self.freed: list[int] = []
        self.commands: list[tuple[int, str, int]] = []  # context, command text, output flags
        self.active = 0
        self.most_active = 0
        self._flags: dict[int, int] = {}
        self._buffers: dict[tuple[int, str], bytes] = {}
        functions: dict[str, Callable[..., Any]] = {
            "nft_ctx_new": self._new,
            "nft_ctx_free": self.freed.append,
            "nft_ctx_buffer_output": lambda _ctx: self.buffer_status,
            "nft_ctx_buffer_error": lambda _ctx: 0,
            "nft_ctx_output_set_flags": self._flags.__setitem__,
            "nft_run_cmd_from_buffer": self._run,
            "nft_ctx_get_output_buffer": lambda ctx: self._buffers.pop((ctx, "out"), b""),
            "nft_ctx_get_error_buffer": lambda ctx: self._buffers.pop((ctx, "err"), b""),
        }
        for symbol, function in functions.items():
            if symbol not in missing:
                setattr(self, symbol, _plain(function))

    def _new(self, flags: int) -> int | None:
        assert flags == 0  # NFT_CTX_DEFAULT
        if self.null_context:
            return None
        ctx = 0x1000 + len(self.made)
        self.made.append(ctx)
        return ctx

    def _run(self, ctx: int, command: bytes) -> int:
        assert ctx in self.made
        assert ctx not in self.freed
        self.active += 1
        self.most_active = max(self.most_active, self.active)
        time.sleep(0.0005)  # long enough for another thread to barge in, were it allowed to
        text = command.decode()
        self.commands.append((ctx, text, self._flags.get(ctx, 0)))
        status, out, err = self.reply(text, self._flags.get(ctx, 0))
        self._buffers[(ctx, "out")], self._buffers[(ctx, "err")] = out, err
        self.active -= 1
        return status


def _plain(function: Callable[..., Any]) -> Callable[..., Any]:
    def call(*args: Any) -> Any:
        return function(*args)

    return call


class Loader:
    """Counts how often the runner loads the library."""

    def __init__(self, library: object) -> None:
        self.library = library
        self.calls = 0

    def __call__(self) -> object:
        self.calls += 1
        if isinstance(self.library, BaseException):
            raise self.library
        return self.library


def runner_with(library: object) -> tuple[LibnftRunner, FakeRunner, Loader]:
    fallback = FakeRunner()
    fallback.on(("nft",), stdout="from the subprocess")
    loader = Loader(library)
    return LibnftRunner(fallback, loader=loader), fallback, loader


# --- which invocations run in-process ---------------------------------------------------------
@pytest.mark.parametrize(
    ("argv", "stdin", "expected"),
    [
        (APPLY, SCRIPT, (SCRIPT, False)),
        (LIST_TABLE, None, ("list table inet portsentinel", True)),
        (("nft", "-j", "list", "tables", "inet"), None, ("list tables inet", True)),
        (("nft", "-j", "list", "set", "inet", "t", "ban4"), None, ("list set inet t ban4", True)),
    ],
)
def test_the_backends_invocations_are_recognised(
    argv: tuple[str, ...], stdin: str | None, expected: tuple[str, bool]
) -> None:
    assert in_process_command(argv, stdin) == expected


@pytest.mark.parametrize(
    ("argv", "stdin"),
    [
        (("nft", "list", "ruleset"), None),  # text output: not an invocation of the backend
        (("nft", "-j", "flush", "ruleset"), None),
        (APPLY, None),  # no script
        (APPLY, "add table inet t\0"),  # ctypes would cut it at the NUL
        (("nft", "-f", "/etc/nftables.conf"), None),
        (("nft", "-f", "-", "-c"), SCRIPT),
        (("nft", "-j", "list"), None),
        (LIST_TABLE, "unexpected stdin"),
        (("nft", "-j", "list", "table", "inet; flush ruleset"), None),
        (("nft", "-j", "list", "ruleset", "{"), None),
        (("nft", "-j", "list", "table", "inet", ""), None),
        (("/usr/local/sbin/nft", "-f", "-"), SCRIPT),  # another program than the default
        (("iptables", "-S"), None),
        (("nft",), None),
        ((), None),
    ],
)
def test_anything_else_goes_to_the_subprocess(argv: tuple[str, ...], stdin: str | None) -> None:
    assert in_process_command(argv, stdin) is None
    if not argv:
        return
    runner, fallback, loader = runner_with(StubLibrary())
    runner.run(argv, input=stdin, timeout=7.0)
    assert [(c.argv, c.input, c.timeout) for c in fallback.calls] == [(argv, stdin, 7.0)]
    assert loader.calls == 0  # nothing loaded for a command the library never runs
    assert (runner.in_process_runs, runner.subprocess_runs) == (0, 1)


# --- running in-process -----------------------------------------------------------------------
def test_a_script_runs_in_process_with_text_output() -> None:
    library = StubLibrary()
    runner, fallback, _ = runner_with(library)
    result = runner.run(list(APPLY), input=SCRIPT, timeout=3.0)
    assert library.commands == [(library.made[0], SCRIPT, 0)]
    assert result == RunResult(APPLY, 0, "", "", result.seconds)
    assert 0 <= result.seconds < 1
    assert result.ok
    assert fallback.calls == []
    assert (runner.in_process_runs, runner.subprocess_runs) == (1, 0)


def test_a_listing_asks_for_json_and_returns_it() -> None:
    library = StubLibrary(reply=lambda _t, _f: (0, LISTED.encode(), b""))
    runner, _, _ = runner_with(library)
    result = runner.run(LIST_TABLE)
    assert library.commands[-1][1:] == ("list table inet portsentinel", NFT_CTX_OUTPUT_JSON)
    assert result.stdout == LISTED
    runner.run(APPLY, input=SCRIPT)  # the next script gets text output again
    assert library.commands[-1][2] == 0


def test_a_refused_command_looks_like_nft_exiting_1() -> None:
    error = b"Error: Could not process rule: No such file or directory\nadd element \xff\n"
    library = StubLibrary(
        reply=lambda text, _f: (-1, b"", error) if "ban4" in text else (0, b"", b"")
    )
    runner, _, _ = runner_with(library)
    refused = runner.run(APPLY, input=SCRIPT)
    assert (refused.returncode, refused.ok, refused.error) == (1, False, None)
    assert refused.stderr == "Error: Could not process rule: No such file or directory\n" + (
        "add element \ufffd\n"
    )
    assert "exit 1; stderr: Error: Could not process rule" in refused.describe()
    accepted = runner.run(APPLY, input="add table inet portsentinel\n")
    assert (accepted.returncode, accepted.stderr) == (0, "")  # the buffers were emptied


def test_the_context_is_created_lazily_shared_and_freed_on_close() -> None:
    library = StubLibrary()
    runner, _, loader = runner_with(library)
    assert (loader.calls, library.made) == (0, [])
    for _ in range(3):
        runner.run(APPLY, input=SCRIPT)
    assert loader.calls == 1
    assert len(library.made) == 1
    runner.close()
    runner.close()  # idempotent: no second free
    assert library.freed == library.made
    runner.run(APPLY, input=SCRIPT)  # a new context after close
    assert len(library.made) == 2
    assert loader.calls == 1  # the library itself is bound once
    with runner:
        pass
    assert library.freed == library.made


def test_one_command_at_a_time_across_threads() -> None:
    library = StubLibrary()
    runner, _, _ = runner_with(library)
    results: list[RunResult] = []

    def work() -> None:
        results.extend(runner.run(APPLY, input=SCRIPT) for _ in range(10))

    threads = [threading.Thread(target=work) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 60
    assert all(result.ok for result in results)
    assert library.most_active == 1
    assert len(library.made) == 1
    assert runner.in_process_runs == 60


def test_bind_types_every_function() -> None:
    library = StubLibrary()
    bind(library)
    run_cmd: Any = library.nft_run_cmd_from_buffer  # type: ignore[attr-defined]
    assert run_cmd.restype is ctypes.c_int
    assert run_cmd.argtypes == (ctypes.c_void_p, ctypes.c_char_p)
    ctx_new: Any = library.nft_ctx_new  # type: ignore[attr-defined]
    assert ctx_new.restype is ctypes.c_void_p  # a pointer, not a truncated int


def test_in_process_commands_are_logged_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    runner, _, _ = runner_with(StubLibrary())
    with caplog.at_level(logging.DEBUG, logger="portsentinel.block.libnft"):
        runner.run(APPLY, input=SCRIPT)
    assert "ran nft -f - in-process" in caplog.text


# --- falling back -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("library", "reason"),
    [
        (OSError("libnftables.so.1: cannot open shared object file"), "cannot open shared"),
        (StubLibrary(missing=["nft_run_cmd_from_buffer"]), "has no nft_run_cmd_from_buffer"),
        (StubLibrary(null_context=True), "nft_ctx_new returned no context"),
        (StubLibrary(buffer_status=-1), "cannot buffer its output"),
        (RuntimeError("loader broke"), "unusable: RuntimeError('loader broke')"),
    ],
    ids=["no-library", "missing-symbol", "null-context", "no-buffer", "loader-error"],
)
def test_an_unusable_library_means_the_subprocess_with_a_logged_reason(
    library: object, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    runner, fallback, loader = runner_with(library)
    with caplog.at_level(logging.WARNING, logger="portsentinel.block.libnft"):
        first = runner.run(APPLY, input=SCRIPT)
        runner.run(LIST_TABLE)
    assert first.stdout == "from the subprocess"
    assert [call.argv for call in fallback.calls] == [APPLY, LIST_TABLE]
    assert runner.fallback_reason is not None
    assert reason in runner.fallback_reason
    assert reason in caplog.text
    assert caplog.text.count("nft runs as a subprocess") == 1  # said once, not per command
    assert loader.calls == 1  # never retried
    if isinstance(library, StubLibrary):
        assert library.commands == []
        assert library.freed == library.made  # a context made but unusable is freed
    runner.close()


def test_a_failing_call_gives_the_library_up_mid_way(caplog: pytest.LogCaptureFixture) -> None:
    def explode(_text: str, _flags: int) -> tuple[int, bytes, bytes]:
        raise ctypes.ArgumentError("argument 2: wrong type")

    library = StubLibrary(reply=explode)
    runner, fallback, _ = runner_with(library)
    with caplog.at_level(logging.WARNING, logger="portsentinel.block.libnft"):
        result = runner.run(APPLY, input=SCRIPT)
    assert result.stdout == "from the subprocess"  # the same command, run the other way
    assert fallback.calls[0].input == SCRIPT
    assert library.freed == library.made
    assert "wrong type" in (runner.fallback_reason or "")
    runner.run(APPLY, input=SCRIPT)
    assert len(fallback.calls) == 2
    assert len(library.made) == 1


def test_a_prefixed_runner_keeps_every_command_a_subprocess(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Prefixed(FakeRunner):
        prefix = ("ip", "netns", "exec", "lab")

    fallback = Prefixed()
    loader = Loader(StubLibrary())
    with caplog.at_level(logging.INFO, logger="portsentinel.block.libnft"):
        runner = LibnftRunner(fallback, loader=loader)
    runner.run(APPLY, input=SCRIPT)
    assert [call.argv for call in fallback.calls] == [APPLY]
    assert loader.calls == 0
    assert runner.fallback_reason == "commands run through the prefix 'ip netns exec lab'"
    assert "ip netns exec lab" in caplog.text


# --- the backend's choice ---------------------------------------------------------------------
def test_a_plain_local_runner_gets_the_in_process_path() -> None:
    plain = Runner()
    chosen = select_runner(plain)
    assert isinstance(chosen, LibnftRunner)
    assert chosen._fallback is plain


@pytest.mark.parametrize(
    ("runner", "nft"),
    [
        (Runner(prefix=["ip", "netns", "exec", "lab"]), "nft"),
        (Runner(), "/usr/local/sbin/nft"),
        (FakeRunner(), "nft"),
        (type("Custom", (Runner,), {})(), "nft"),
    ],
    ids=["prefix", "other-nft", "scripted", "subclass"],
)
def test_other_runners_are_used_as_they_are(runner: Any, nft: str) -> None:
    assert select_runner(runner, nft) is runner


def test_the_backend_uses_the_library_by_default_and_frees_it_on_stop() -> None:
    assert isinstance(NftablesBackend(Runner())._runner, LibnftRunner)
    assert isinstance(NftablesBackend(Runner(), in_process=False)._runner, Runner)

    library = StubLibrary()
    runner, fallback, _ = runner_with(library)
    backend = NftablesBackend(runner)
    detail = backend.block(BanSpec.create("198.18.0.2", timeout=3600))
    assert detail["key"] == "198.18.0.2"
    assert library.commands[0][1] == SCRIPT
    assert fallback.calls == []
    backend.stop()
    assert library.freed == library.made
