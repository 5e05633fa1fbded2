"""The command line's skeleton: every family's verbs parsed, PortSentry's own flags, errors
mapped to exit statuses, and the console script."""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Iterator

import pytest

from portsentinel.cli import main as cli
from portsentinel.cli import run as run_verbs
from portsentinel.errors import CaptureError, ConfigError, PortSentinelError


def test_every_family_declares_its_verbs() -> None:
    parser = cli.build_parser()
    verbs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert list(verbs.choices) == [
        "run", "reload", "status", "list", "block", "unblock", "allow", "why", "history",
        "replay", "report", "config", "install", "uninstall", "migrate", "fleet",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["-atcp"], ["run", "--mode", "atcp"]),
        (["-atcp", "-audp", "--dry-run"], ["run", "--mode", "atcp,audp", "--dry-run"]),
        (["status", "-atcp"], ["status", "-atcp"]),
        ([], []),
    ],
)
def test_portsentry_flags_become_run(argv: list[str], expected: list[str]) -> None:
    assert cli.translate_portsentry_flags(argv) == expected


def test_portsentrys_invocation_runs_the_daemon() -> None:
    args = cli.build_parser().parse_args(cli.translate_portsentry_flags(["-stcp", "-sudp"]))
    assert args.handler is run_verbs.cmd_run
    assert args.mode == "stcp,sudp"


@pytest.mark.parametrize(
    ("error", "status", "message"),
    [
        (ConfigError("bad", key="KEY", expected="good"), 2, "KEY: bad (expected good)\n"),
        (CaptureError("no ring"), 1, "portsentinel: no ring\n"),
        (PortSentinelError("store broken"), 1, "portsentinel: store broken\n"),
        (BrokenPipeError(), 0, ""),
    ],
)
def test_errors_map_to_exit_statuses(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    error: Exception,
    status: int,
    message: str,
) -> None:
    def fail(*_args: object) -> int:
        raise error

    monkeypatch.setattr(run_verbs, "cmd_status", fail)
    assert cli.main(["status"]) == status
    assert capsys.readouterr().err == message


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["no-such-verb"])
    assert exit_.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_console_script_runs_as_a_module() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "portsentinel", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0
    assert "replay" in done.stdout


def _verbs(
    parser: argparse.ArgumentParser, prefix: str = ""
) -> Iterator[tuple[str, argparse.ArgumentParser, str | None]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, sub in action.choices.items():
                yield f"{prefix}{name}", sub, helps.get(name)
                yield from _verbs(sub, f"{prefix}{name} ")


def test_every_verb_says_what_it_does_and_what_its_arguments_are() -> None:
    """Every verb has a line in the verb list and a description in its own --help, and every
    argument of it has a help text."""
    found = list(_verbs(cli.build_parser()))
    assert len(found) >= 17
    for name, sub, line in found:
        assert line, f"{name}: no line in the verb list"
        assert sub.description, f"{name}: no description in its --help"
        bare = [a.dest for a in sub._actions if not a.help and a.dest != "help"]
        assert not bare, f"{name}: arguments without help: {bare}"
