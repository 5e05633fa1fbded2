"""The runner: argv only, timeouts that kill the whole process group, output captured."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from portsentinel.block.runner import (
    DROP_AMBIENT,
    Runner,
    RunResult,
    truncate,
    unprivileged,
)


def test_success_captures_output_and_status() -> None:
    result = Runner().run(
        [sys.executable, "-c", "import sys; print('out'); print('err', file=sys.stderr)"]
    )
    assert result.ok
    assert result.returncode == 0
    assert result.stdout == "out\n"
    assert result.stderr == "err\n"
    assert result.error is None


def test_non_zero_exit_is_a_result_not_an_exception() -> None:
    result = Runner().run(
        [sys.executable, "-c", "import sys; sys.stderr.write('boom'); sys.exit(3)"]
    )
    assert not result.ok
    assert result.returncode == 3
    assert result.describe() == "exit 3; stderr: boom"


def test_input_is_fed_on_stdin() -> None:
    result = Runner().run(
        [sys.executable, "-c", "import sys; print(sys.stdin.read().upper())"], input="abc"
    )
    assert result.stdout == "ABC\n"


def test_stdin_is_closed_without_input() -> None:
    result = Runner().run([sys.executable, "-c", "import sys; print(repr(sys.stdin.read()))"])
    assert result.stdout == "''\n"


def test_missing_program_is_reported() -> None:
    result = Runner().run(["/nonexistent/portsentinel-test-program"])
    assert result.returncode is None
    assert result.error is not None
    assert result.error.startswith("cannot run:")
    assert not result.ok


def test_argv_is_not_interpreted_by_a_shell(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    result = Runner().run(["echo", f"x; touch {marker}", f"$(touch {marker})"])
    assert result.stdout == f"x; touch {marker} $(touch {marker})\n"
    assert not marker.exists()


def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    # The shell starts a grandchild that would write a file after the timeout.
    marker = tmp_path / "late"
    script = f"(sleep 2; touch {marker}) & sleep 30"
    started = time.monotonic()
    result = Runner().run(["/bin/sh", "-c", script], timeout=0.5)
    assert time.monotonic() - started < 5
    assert result.returncode is None
    assert result.error == "timed out after 0.5s"
    time.sleep(2.5)
    assert not marker.exists()


def test_prefix_is_prepended() -> None:
    result = Runner(prefix=["env", "PORTSENTINEL_TEST=1"]).run(
        ["sh", "-c", "echo $PORTSENTINEL_TEST"]
    )
    assert result.argv[:2] == ("env", "PORTSENTINEL_TEST=1")
    assert result.stdout == "1\n"


def test_default_timeout_applies() -> None:
    result = Runner(timeout=0.3).run(["sleep", "5"])
    assert result.error == "timed out after 0.3s"


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="empty argv"):
        Runner().run([])
    with pytest.raises(ValueError, match="positive"):
        Runner(timeout=0)


def test_describe_truncates_long_output() -> None:
    result = RunResult(("x",), 1, "o" * 1000, "", 0.0)
    text = result.describe()
    assert text.startswith("exit 1; stdout: ooo")
    assert "[600 more characters]" in text
    assert len(text) < 500


def test_truncate_keeps_short_text_whole() -> None:
    assert truncate("  short \n") == "short"
    assert truncate("abcdef", limit=3) == "abc... [3 more characters]"


def test_command_is_shell_quoted_for_logs() -> None:
    assert RunResult(("echo", "a b", "c;d"), 0, "", "", 0.0).command == "echo 'a b' 'c;d'"


def test_no_child_is_left_behind() -> None:
    before = set(os.listdir("/proc"))
    Runner().run(["true"])
    after = {p for p in os.listdir("/proc") if p.isdigit()} - before
    for pid in after:  # anything new must not be a child of ours
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        assert int(stat.rsplit(")", 1)[1].split()[1]) != os.getpid()


def test_the_administrators_commands_drop_the_capabilities_only_when_not_root() -> None:
    assert unprivileged(True, euid=998)[-1] == DROP_AMBIENT
    assert unprivileged(True, euid=0) == ()  # root (by hand, COMMANDS_AS_ROOT): as before
    assert unprivileged(False, euid=998) == ()  # the firewall tools keep them


def test_the_trampoline_clears_the_ambient_set_and_becomes_the_command() -> None:
    trampoline = unprivileged(True, euid=998)
    done = Runner().run([*trampoline, "grep", "^CapAmb:", "/proc/self/status"])
    assert done.ok, done.describe()
    assert done.stdout.split() == ["CapAmb:", "0000000000000000"]
    missing = Runner().run([*trampoline, "/nonexistent/command"])
    assert missing.returncode == 127
    assert "cannot run /nonexistent/command: No such file or directory" in missing.stderr
