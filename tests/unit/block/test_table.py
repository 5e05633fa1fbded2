"""The conntrack rule goes through block's runner, into the ban sets' own table, idempotently."""

from __future__ import annotations

import shutil
from collections.abc import Sequence

import pytest

from portsentinel.block import nftables, table
from portsentinel.block.runner import RunResult

from .block_fakes import FakeRunner


@pytest.fixture
def nft_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/sbin/{name}")


@pytest.mark.usefixtures("nft_installed")
def test_one_nft_transaction_in_the_ban_sets_table() -> None:
    runner = FakeRunner()
    assert table.ensure_conntrack(runner) is None
    [call] = runner.calls
    assert call.argv == ("/usr/sbin/nft", "-f", "-")
    assert call.timeout == table.TIMEOUT
    assert call.input is not None
    lines = call.input.splitlines()
    assert lines[0] == f"add table {nftables.TABLE_REF}"
    assert all(f" {nftables.TABLE_REF} " in f"{line} " for line in lines)
    # The chain's rules are replaced, not added to: running it twice leaves one rule.
    assert lines.index(f"flush chain inet portsentinel {table.CHAIN}") < len(lines) - 1
    assert lines[-1].endswith("ct state established,related counter")


@pytest.mark.usefixtures("nft_installed")
def test_nft_refusing_says_why() -> None:
    runner = FakeRunner()
    runner.on(["/usr/sbin/nft"], rc=1, stderr="Error: Could not process rule\n")
    assert table.ensure_conntrack(runner) == "nft exited with 1: Error: Could not process rule"


@pytest.mark.usefixtures("nft_installed")
def test_nft_that_never_finished_says_why() -> None:
    class TimedOut(FakeRunner):
        def run(
            self, argv: Sequence[str], *, input: str | None = None, timeout: float | None = None
        ) -> RunResult:
            return RunResult(tuple(argv), None, "", "", 5.0, "timed out after 5.0s")

    assert table.ensure_conntrack(TimedOut()) == "nft failed: timed out after 5.0s"


def test_without_nft_nothing_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    runner = FakeRunner()
    assert table.ensure_conntrack(runner) == "the nft command is not installed"
    assert runner.calls == []
