"""The ban verbs as the command line parses and runs them (their work on a store is tested in
test_ban_operations.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from portsentinel.cli.main import build_parser
from unit.cli.stores import run


def test_list_of_a_directory_without_a_store(tmp_path: Path) -> None:
    assert run(["list", "--state-dir", str(tmp_path)]) == (0, "no active bans\n", "")
    assert run(["list", "--state-dir", str(tmp_path), "--json"]) == (0, "", "")


@pytest.mark.parametrize("argv", [["unblock"], ["unblock", "192.0.2.1", "--all"]])
def test_unblock_needs_addresses_or_all_but_not_both(tmp_path: Path, argv: list[str]) -> None:
    status, _out, err = run([*argv, "--state-dir", str(tmp_path)])
    assert status == 2
    assert err == "unblock: give addresses or --all (expected ADDR... or --all)\n"
    assert list(tmp_path.iterdir()) == []  # refused before anything was opened


def test_unblock_of_an_address_not_blocked_exits_1(tmp_path: Path) -> None:
    status, out, err = run(["unblock", "192.0.2.1", "--state-dir", str(tmp_path)])
    assert (status, out) == (1, "")
    assert "192.0.2.1 is not blocked" in err


def test_block_for_a_bad_duration_is_a_usage_error(tmp_path: Path) -> None:
    status, _out, err = run(["block", "192.0.2.1", "--for", "soon", "--state-dir", str(tmp_path)])
    assert status == 2
    assert err.startswith("--for: ")


def test_allow_of_a_bad_network_is_a_usage_error(tmp_path: Path) -> None:
    status, _out, err = run(["allow", "not-a-net", "--state-dir", str(tmp_path)])
    assert status == 2
    assert err.startswith("ADDR: not an address or network: 'not-a-net'")


def test_the_verbs_parse_their_options() -> None:
    args = build_parser().parse_args(["block", "192.0.2.1", "--for", "1h"])
    assert (args.address, args.duration, args.config) == ("192.0.2.1", "1h", None)
    args = build_parser().parse_args(["allow", "192.0.2.0/24", "--comment", "office"])
    assert (args.address, args.comment) == ("192.0.2.0/24", "office")
