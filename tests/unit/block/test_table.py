"""The conntrack rule goes through block's runner, into the ban sets' own table, idempotently;
while the daemon runs, the chain is checked (gone after a flush, hooked elsewhere, without its
rule) so that it can be put back."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from typing import Any

import pytest

from portsentinel.block import nft_state, table
from portsentinel.block.libnft import LibnftRunner
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
    assert lines[0] == f"add table {nft_state.TABLE_REF}"
    assert all(f" {nft_state.TABLE_REF} " in f"{line} " for line in lines)
    # The chain's rules are replaced, not added to: running it twice leaves one rule.
    assert lines.index(f"flush chain inet portsentinel {table.CHAIN}") < len(lines) - 1
    assert lines[-3].endswith("ct state established,related counter")


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


# --- the chain checked while the daemon runs (nft 1.0.6's JSON, as listed in a namespace) ------

LISTING = json.dumps({"nftables": [
    {"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
    {"chain": {"family": "inet", "table": "portsentinel", "name": "conntrack", "handle": 1,
               "type": "filter", "hook": "prerouting", "prio": -150, "policy": "accept"}},
    {"rule": {"family": "inet", "table": "portsentinel", "chain": "conntrack", "handle": 2,
              "expr": [{"match": {"op": "in", "left": {"ct": {"key": "state"}},
                                  "right": ["established", "related"]}},
                       {"counter": {"packets": 0, "bytes": 0}}]}},
]})  # fmt: skip
LIST_ARGV = ("nft", "-j", "list", "chain", "inet", "portsentinel", "conntrack")


def listing_without(kind: str) -> str:
    items = json.loads(LISTING)["nftables"]
    if kind == "rule":
        items = items[:2]
    else:
        items[1]["chain"]["hook"] = "input"
    return json.dumps({"nftables": items})


def test_a_chain_in_place_has_no_problem() -> None:
    runner = FakeRunner()
    runner.on(LIST_ARGV, stdout=LISTING)
    assert table.conntrack_problem(runner) is None
    [call] = runner.calls
    assert call.argv == LIST_ARGV  # the program name: libnftables runs it in-process


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        ({"rc": 1, "stderr": "Error: No such file or directory\n"}, "chain conntrack is missing"),
        ({"rc": 1, "stderr": "Error: Operation not permitted\n"},
         "cannot list chain conntrack: exit 1; stderr: Error: Operation not permitted"),
        ({"stdout": "{"}, "unreadable nft output"),
        ({"stdout": listing_without("rule")}, "chain conntrack has no 'ct state' rule"),
        ({"stdout": listing_without("hook")},
         "chain conntrack is not a filter chain on the prerouting hook"),
    ],
)  # fmt: skip
def test_what_is_wrong_with_the_chain_is_said(answer: dict[str, Any], problem: str) -> None:
    runner = FakeRunner()
    runner.on(LIST_ARGV, **answer)
    found = table.conntrack_problem(runner)
    assert found is not None
    assert found.startswith(problem)


def test_nft_that_cannot_run_is_no_problem_to_repair() -> None:
    class Missing(FakeRunner):
        def run(
            self, argv: Sequence[str], *, input: str | None = None, timeout: float | None = None
        ) -> RunResult:
            return RunResult(tuple(argv), None, "", "", 0.0, "cannot run: no nft")

    assert table.conntrack_problem(Missing()) is None


@pytest.mark.usefixtures("nft_installed")
def test_the_chain_keeper_installs_checks_and_closes() -> None:
    runner = FakeRunner()
    runner.on(LIST_ARGV, rc=1, stderr="Error: No such file or directory\n")
    chain = table.ConntrackChain(runner)
    assert chain.problem() == "chain conntrack is missing"
    assert chain.install() is None
    assert runner.argvs()[-1] == ("/usr/sbin/nft", "-f", "-")
    chain.close()  # a scripted runner has no context to free


def test_the_chain_keeper_goes_in_process_when_it_can() -> None:
    chain = table.ConntrackChain()
    assert isinstance(chain._runner, LibnftRunner)
    chain.close()


def test_the_unsolicited_segments_are_logged_by_state_with_a_rate_limit() -> None:
    lines = table.script(ack_group=5051).splitlines()
    ref = "inet portsentinel unsolicited"
    chain = [line for line in lines if f" {ref}" in line]
    assert chain[0] == (
        f"add chain {ref} {{ type filter hook prerouting priority -140; policy accept; }}"
    )
    assert chain[1] == f"flush chain {ref}"
    assert chain[2] == f"add rule {ref} meta l4proto != tcp return"  # UDP never reaches a log
    # Established traffic and segments to a port in use leave at a return.
    assert f"add rule {ref} ct state != {{ new, invalid }} return" in chain
    assert f"add rule {ref} socket transparent 0 return" in chain
    assert chain[-2:] == [
        f"add rule {ref} ct state {state} limit rate 2000/second burst 2000 packets "
        f'counter log prefix "{prefix}" group 5051 snaplen 128'
        for state, prefix in (("new", table.NEW_PREFIX), ("invalid", table.INVALID_PREFIX))
    ]
    # Without: the chain goes (added first, so that deleting it cannot fail).
    assert table.script().splitlines()[-2:] == [chain[0], f"delete chain {ref}"]


@pytest.mark.usefixtures("nft_installed")
def test_a_missing_or_incomplete_unsolicited_chain_is_a_problem() -> None:
    """And a restart's script may meet the sets the previous run made: declared as the
    kernel shows them (``update`` makes them dynamic), so ``add set`` is no conflict."""
    assert "flags dynamic, timeout; timeout 15m;" in table.script(ssh_ports=(22,))
    runner = FakeRunner()
    runner.on(LIST_ARGV, stdout=LISTING)
    unsolicited = ("nft", "-j", "list", "chain", "inet", "portsentinel", "unsolicited")
    runner.on(unsolicited, rc=1, stderr="Error: No such file or directory")
    assert table.conntrack_problem(runner, ack_group=5051) == "chain unsolicited is missing"
    rule = {"rule": {"family": "inet", "table": "portsentinel", "chain": "unsolicited",
                     "expr": [{"log": {"group": 5051, "snaplen": 128}}]}}  # fmt: skip
    runner.on(unsolicited, stdout=json.dumps({"nftables": [rule]}))
    assert table.conntrack_problem(runner, ack_group=5051) == (
        "chain unsolicited lacks the rules that log unsolicited segments"
    )
    runner.on(unsolicited, stdout=json.dumps({"nftables": [rule, rule]}))
    assert table.conntrack_problem(runner, ack_group=5051) is None
    assert table.conntrack_problem(runner) is None
