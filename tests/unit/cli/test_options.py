"""The options several verbs share read their defaults from ``paths`` when the parser is
built, so a redirected path shows in the help and reaches the handler."""

from __future__ import annotations

import argparse

import pytest

from portsentinel import paths
from portsentinel.cli import options


def parser_with(*adders: object) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="p")
    for add in adders:
        add(parser)  # type: ignore[operator]
    return parser


def test_state_dir_defaults_to_paths_when_the_parser_is_built(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(paths, "STATE_DIR", "/srv/ps-state")
    parser = parser_with(options.add_state_dir_option)
    assert parser.parse_args([]).state_dir == "/srv/ps-state"
    assert parser.parse_args(["--state-dir", "/x"]).state_dir == "/x"
    state_dir = next(a for a in parser._actions if a.dest == "state_dir")
    assert state_dir.help is not None
    assert state_dir.help.endswith("(default /srv/ps-state)")


def test_state_dir_help_says_what_the_verb_does_with_it() -> None:
    parser = argparse.ArgumentParser(prog="p")
    options.add_state_dir_option(parser, "state directory to read")
    assert "state directory to read (default" in " ".join(parser.format_help().split())


def test_config_and_mode_default_to_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(paths, "CONFIG_FILE", "/srv/ps.conf")
    parser = parser_with(options.add_config_option, options.add_mode_option)
    args = parser.parse_args([])
    assert (args.config, args.mode) == (None, None)
    assert "/srv/ps.conf" in parser.format_help()
