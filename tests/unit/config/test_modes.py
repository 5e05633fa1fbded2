"""Mode choice: --mode, else Debian's defaults file, else atcp,audp."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from portsentinel.config.modes import (
    modes_text,
    parse_defaults,
    parse_modes,
    read_defaults_file,
    resolve_modes,
)
from portsentinel.errors import ConfigError, ConfigErrors
from portsentinel.model import Mode

DEFAULTS = Path(__file__).parents[2] / "fixtures" / "config" / "debian" / "default-portsentry"


@pytest.mark.parametrize(
    ("text", "modes"),
    [
        ("atcp,audp", (Mode.ATCP, Mode.AUDP)),
        ("audp, stcp", (Mode.STCP, Mode.AUDP)),
        ("TCP", (Mode.TCP, None)),
        ("sudp", (None, Mode.SUDP)),
        ("udp,", (None, Mode.UDP)),
        ("atcp audp", (Mode.ATCP, Mode.AUDP)),
    ],
)
def test_parse_modes(text: str, modes: tuple[Mode | None, Mode | None]) -> None:
    assert parse_modes(text, "--mode") == modes


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("atcp,stcp", "--mode: two TCP modes (atcp, stcp)"),
        ("xtcp", "--mode: unknown mode 'xtcp'"),
        ("", "--mode: no mode given"),
        (" , ", "--mode: no mode given"),
    ],
)
def test_parse_modes_rejects(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_modes(text, "--mode")
    assert caught.value.render() == (
        f"{message} (expected at most one TCP mode (tcp, stcp, atcp) and one UDP mode "
        "(udp, sudp, audp))"
    )


def test_debian_defaults_file() -> None:
    assert read_defaults_file(str(DEFAULTS)) == (Mode.ATCP, Mode.AUDP, ())


def test_defaults_file_shell_forms() -> None:
    text = (
        "# comment\nexport TCP_MODE=stcp  # stealth\nOTHER=1\nif true; then :; fi\n"
        "UDP_MODE='sudp'\nUDP_MODE=\"udp\"\n"
    )
    assert parse_defaults(text, "d") == (Mode.STCP, Mode.UDP, ())


def test_defaults_file_empty_value_names_no_mode() -> None:
    assert parse_defaults('TCP_MODE=""\nUDP_MODE="audp"\n', "d") == (None, Mode.AUDP, ())


def test_defaults_file_warnings() -> None:
    text = 'TCP_MODE="$MODE"\nUDP_MODE = "audp"\nTCP_MODE="atcp\n'
    assert parse_defaults(text, "d") == (
        None,
        None,
        (
            "d:1: TCP_MODE: shell expansion is not evaluated; ignored",
            "d:2: UDP_MODE: spaces around '=' make this a command in sh, not a setting; ignored",
            "d:3: TCP_MODE: cannot read the value (No closing quotation); ignored",
        ),
    )


def test_defaults_file_bad_modes_are_errors() -> None:
    with pytest.raises(ConfigErrors) as caught:
        parse_defaults('TCP_MODE="udp"\nUDP_MODE="fast"\n', "d")
    assert [e.render() for e in caught.value.errors] == [
        "d:1: TCP_MODE: udp is not a TCP mode (expected tcp or stcp or atcp)",
        "d:2: UDP_MODE: unknown mode 'fast' (expected udp or sudp or audp)",
    ]


def test_missing_defaults_file(tmp_path: Path) -> None:
    assert read_defaults_file(str(tmp_path / "none")) == (None, None, ())
    with pytest.raises(ConfigErrors, match="cannot read the file"):
        read_defaults_file(str(tmp_path))


def test_resolution_order(tmp_path: Path) -> None:
    defaults = tmp_path / "portsentry"
    defaults.write_text('TCP_MODE="tcp"\n')
    assert resolve_modes("sudp", str(defaults)) == (None, Mode.SUDP, "--mode")
    assert resolve_modes(None, str(defaults)) == (Mode.TCP, None, str(defaults))
    defaults.write_text('TCP_MODE=""\nUDP_MODE=""\n')
    built_in = (Mode.ATCP, Mode.AUDP, "the built-in default")
    assert resolve_modes(None, str(defaults)) == built_in
    assert resolve_modes(None, str(tmp_path / "none")) == built_in
    assert resolve_modes(None, "") == built_in


def test_resolve_modes_passes_errors_on(tmp_path: Path) -> None:
    defaults = tmp_path / "portsentry"
    defaults.write_text('TCP_MODE="bogus"\n')
    with pytest.raises(ConfigErrors):
        resolve_modes(None, str(defaults))
    with pytest.raises(ConfigError):
        resolve_modes("bogus", str(defaults))


def test_modes_text() -> None:
    assert modes_text(Mode.ATCP, Mode.AUDP) == "atcp,audp"
    assert modes_text(None, Mode.UDP) == "udp"
    assert modes_text(None, None) == "none"


def test_a_defaults_file_that_is_not_a_regular_file_is_refused_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ConfigErrors) as caught:
        read_defaults_file(str(fifo))
    assert str(caught.value) == (
        f"{fifo}: DEFAULTS_FILE: cannot read the file: a FIFO (named pipe), not a regular "
        "file (expected a readable file)"
    )
    with pytest.raises(ConfigErrors, match=r"DEFAULTS_FILE: .*character device"):
        resolve_modes(None, "/dev/zero")
