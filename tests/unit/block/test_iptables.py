"""iptables backend without root: the commands for both methods, and reading -S / ipset save."""

from __future__ import annotations

import pytest

from portsentinel.block.base import BanSpec
from portsentinel.block.iptables import (
    MAX_TIMEOUT,
    IptablesBackend,
    parse_ipset_save,
    parse_rules,
)
from portsentinel.errors import BackendError
from unit.block.block_fakes import FakeRunner

TAG = ("-m", "comment", "--comment", "portsentinel", "-j", "DROP")
W = ("-w", "5")


def rule_check_absent(runner: FakeRunner) -> None:
    """``-C`` says "no such rule" (exit 1) for every rule."""
    runner.on(lambda argv, _: "-C" in argv, rc=1, stderr="iptables: Bad rule")


def test_ipset_start_creates_sets_and_one_rule_per_chain() -> None:
    runner = FakeRunner()
    rule_check_absent(runner)
    IptablesBackend(runner, use_ipset=True).start()
    argvs = runner.argvs()
    assert (
        "ipset", "create", "portsentinel4", "hash:net", "family", "inet", "timeout", "0", "-exist"
    ) in argvs  # fmt: skip
    assert (
        "ipset", "create", "portsentinel6", "hash:net", "family", "inet6", "timeout", "0", "-exist"
    ) in argvs  # fmt: skip
    inserts = [a for a in argvs if "-I" in a]
    match4 = ("-m", "set", "--match-set", "portsentinel4", "src", *TAG)
    match6 = ("-m", "set", "--match-set", "portsentinel6", "src", *TAG)
    assert inserts == [
        ("iptables", *W, "-I", "INPUT", "1", *match4),
        ("iptables", *W, "-I", "FORWARD", "1", *match4),
        ("ip6tables", *W, "-I", "INPUT", "1", *match6),
        ("ip6tables", *W, "-I", "FORWARD", "1", *match6),
    ]


def test_ipset_start_is_idempotent_when_rules_exist() -> None:
    runner = FakeRunner()  # -C exits 0: the rules are there
    IptablesBackend(runner, use_ipset=True).start()
    assert not [a for a in runner.argvs() if "-I" in a]


def test_ipset_block_and_unblock() -> None:
    runner = FakeRunner()
    backend = IptablesBackend(runner, use_ipset=True)
    detail = backend.block(BanSpec.create("198.18.0.3", timeout=3599.5))
    assert runner.argvs() == [
        ("ipset", "add", "portsentinel4", "198.18.0.3", "timeout", "3600", "-exist")
    ]
    assert detail["method"] == "ipset"
    assert detail["set"] == "portsentinel4"
    assert detail["timeout"] == 3600
    backend.unblock(detail)
    assert runner.argvs()[-1] == ("ipset", "del", "portsentinel4", "198.18.0.3", "-exist")


def test_ipset_permanent_long_and_prefix_bans() -> None:
    runner = FakeRunner()
    backend = IptablesBackend(runner, use_ipset=True)
    backend.block(BanSpec.create("fd00:5e::", prefix=64))
    backend.block(BanSpec.create("198.18.0.3", timeout=90 * 86400))
    assert runner.argvs() == [
        ("ipset", "add", "portsentinel6", "fd00:5e::/64", "timeout", "0", "-exist"),
        ("ipset", "add", "portsentinel4", "198.18.0.3", "timeout", str(MAX_TIMEOUT), "-exist"),
    ]


def test_ipset_block_failure_degrades() -> None:
    runner = FakeRunner()
    runner.on(
        ("ipset", "add"), rc=1, stderr="ipset v7.17: The set with the given name does not exist"
    )
    backend = IptablesBackend(runner, use_ipset=True)
    with pytest.raises(BackendError, match="does not exist"):
        backend.block(BanSpec.create("198.18.0.3"))
    assert backend.degraded is not None


def test_rules_block_is_idempotent_with_check() -> None:
    runner = FakeRunner()
    rule_check_absent(runner)
    backend = IptablesBackend(runner, use_ipset=False)
    detail = backend.block(BanSpec.create("fd00:5e::3", timeout=60))
    assert [a for a in runner.argvs() if "-I" in a] == [
        ("ip6tables", *W, "-I", "INPUT", "1", "-s", "fd00:5e::3/128", *TAG),
        ("ip6tables", *W, "-I", "FORWARD", "1", "-s", "fd00:5e::3/128", *TAG),
    ]
    assert detail["method"] == "rules"
    assert detail["chains"] == ["INPUT", "FORWARD"]
    assert detail["timeout"] is None  # plain rules do not expire in the kernel

    present = FakeRunner()  # -C exits 0: already blocked
    IptablesBackend(present, use_ipset=False).block(BanSpec.create("fd00:5e::3"))
    assert not [a for a in present.argvs() if "-I" in a]


def test_rules_unblock_deletes_while_present() -> None:
    runner = FakeRunner()
    # INPUT: present, present again after one -D (a duplicate), then gone; FORWARD: gone.
    runner.on(lambda argv, _: "-C" in argv, rc=[0, 0, 1, 1])
    detail = {
        "backend": "iptables", "address": "198.18.0.3", "prefix": 32, "port": 0,
        "proto": "tcp", "mode": None, "method": "rules", "chains": ["INPUT", "FORWARD"],
    }  # fmt: skip
    IptablesBackend(runner, use_ipset=True).unblock(detail)  # the detail's method wins
    deletes = [a for a in runner.argvs() if "-D" in a]
    assert deletes == [("iptables", *W, "-D", "INPUT", "-s", "198.18.0.3/32", *TAG)] * 2
    assert not [a for a in runner.argvs() if a[0] == "ipset"]


def test_check_failure_other_than_absent_raises() -> None:
    runner = FakeRunner()
    runner.on(lambda argv, _: "-C" in argv, rc=4, stderr="Permission denied (you must be root)")
    backend = IptablesBackend(runner, use_ipset=False)
    with pytest.raises(BackendError, match="must be root"):
        backend.block(BanSpec.create("198.18.0.3"))
    assert backend.degraded is not None


@pytest.mark.parametrize(
    "change", [{"chains": ["INPUT", "-F"]}, {"chains": "INPUT"}, {"set": "x; y"}, {"set": "-F"}]
)
def test_tampered_detail_is_refused(change: dict[str, object]) -> None:
    detail: dict[str, object] = {
        "backend": "iptables", "address": "198.18.0.3", "prefix": 32, "port": 0,
        "proto": "tcp", "mode": None, "method": "ipset" if "set" in change else "rules",
    }  # fmt: skip
    detail.update(change)
    with pytest.raises(BackendError):
        IptablesBackend(FakeRunner(), use_ipset=False).unblock(detail)


def test_bad_chain_name_is_refused() -> None:
    with pytest.raises(BackendError, match="not a chain"):
        IptablesBackend(FakeRunner(), chains=["INPUT", "--flush"])


def test_auto_detection_follows_the_ipset_command() -> None:
    assert IptablesBackend(FakeRunner(), ipset="/nonexistent/ipset").method == "rules"
    assert IptablesBackend(FakeRunner(), ipset="sh").method == "ipset"


SAVE = """create portsentinel4 hash:net family inet hashsize 1024 maxelem 65536 timeout 0
add portsentinel4 10.0.0.0/8 timeout 59
add portsentinel4 198.18.0.3 timeout 0
add other 198.18.0.4 timeout 5
add portsentinel4 garbage timeout 5
add portsentinel4 198.18.0.7 timeout x
"""


def test_parse_ipset_save() -> None:
    assert parse_ipset_save(SAVE, "portsentinel4") == {
        "10.0.0.0/8": 59.0,
        "198.18.0.3": None,
        "198.18.0.7": None,
    }


RULES = """-P INPUT ACCEPT
-P FORWARD ACCEPT
-A INPUT -s 1.2.3.4/32 -m comment --comment portsentinel -j DROP
-A FORWARD -s 1.2.3.4/32 -m comment --comment portsentinel -j DROP
-A INPUT -s 10.0.0.0/8 -m comment --comment portsentinel -j DROP
-A INPUT -s 5.6.7.8/32 -j DROP
-A INPUT -s 5.6.7.9/32 -m comment --comment admin -j DROP
-A OUTPUT -s 9.9.9.9/32 -m comment --comment portsentinel -j DROP
-A INPUT -m set --match-set portsentinel4 src -m comment --comment portsentinel -j DROP
"""


def test_parse_rules_lists_only_ours() -> None:
    assert parse_rules(RULES, ("INPUT", "FORWARD")) == ["1.2.3.4", "10.0.0.0/8"]


def test_check_in_each_method() -> None:
    runner = FakeRunner()
    runner.on(("iptables", *W, "-S"), stdout=RULES)
    result = IptablesBackend(runner, use_ipset=False).check()
    assert result.intact
    assert dict(result.present) == {"1.2.3.4": None, "10.0.0.0/8": None}

    runner = FakeRunner()
    runner.on(("ipset", "save", "portsentinel4"), stdout=SAVE)
    runner.on(("ipset", "save", "portsentinel6"), rc=1, stderr="The set does not exist")
    rule_check_absent(runner)
    result = IptablesBackend(runner, use_ipset=True).check()
    assert not result.intact
    assert result.problems == (
        "iptables INPUT: no rule for the set",
        "iptables FORWARD: no rule for the set",
        "ipset portsentinel6 is missing: exit 1; stderr: The set does not exist",
    )
    assert "198.18.0.3" in result.present
