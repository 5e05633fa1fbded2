"""NAT rule reading: real dumps from nft and iptables-save, edge cases, and running the tools."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest

from portsentinel.host.natrules import NatForwarding, forwarded_ports, read_nat_rules
from portsentinel.model import Proto

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "nat"


def ports(*items: int | range) -> frozenset[int]:
    out: set[int] = set()
    for item in items:
        out.update(item if isinstance(item, range) else (item,))
    return frozenset(out)


# (fixture, is nft JSON, tcp, udp, all_tcp, all_udp) — see tests/fixtures/nat/README.md
CASES = [
    ("docker-iptables-save.txt", False, ports(8080), ports(5353), False, False),
    ("docker-ip6tables-save.txt", False, ports(8443), ports(), False, False),
    ("kube-proxy-iptables-save.txt", False, ports(53, 80, 30080), ports(53), False, False),
    (
        "misc-iptables-save.txt",
        False,
        ports(25, 465, range(587, 590), 2222, 3128),
        ports(range(60000, 60011)),
        False,
        False,
    ),
    (
        "nft-dnat-redirect.json",
        True,
        ports(53, 80, 443, 2200, 3128, 6001, 7001, 7002, range(8000, 8003), 8443, 9090),
        ports(53, 1194, range(5000, 5003), 6002),
        False,
        False,
    ),
    ("nft-kube-proxy.json", True, ports(443, 30080), ports(53), False, False),
    ("nft-docker-iptables-nft.json", True, ports(), ports(), False, False),
    ("nft-one-to-one.json", True, ports(), ports(), True, True),
    ("nft-no-nat.json", True, ports(), ports(), False, False),
]


@pytest.mark.parametrize("case", CASES, ids=[case[0] for case in CASES])
def test_fixture(case: tuple[str, bool, frozenset[int], frozenset[int], bool, bool]) -> None:
    name, is_nft, tcp, udp, all_tcp, all_udp = case
    text = (FIXTURES / name).read_text()
    got = forwarded_ports(text, None) if is_nft else forwarded_ports(None, text)
    assert got == NatForwarding(tcp, udp, all_tcp, all_udp)


def test_both_sources_are_united() -> None:
    nft = (FIXTURES / "nft-kube-proxy.json").read_text()
    ipt = "\n".join(
        (FIXTURES / name).read_text()
        for name in ("docker-iptables-save.txt", "docker-ip6tables-save.txt")
    )
    got = forwarded_ports(nft, ipt)
    assert got.tcp == {443, 30080, 8080, 8443}
    assert got.udp == {53, 5353}


def test_nothing_given_forwards_nothing() -> None:
    assert forwarded_ports(None, None) == NatForwarding()
    assert forwarded_ports("", "") == NatForwarding()


def test_forwards_answers_per_protocol() -> None:
    nat = NatForwarding(tcp=frozenset({8080}), udp=frozenset({5353}), all_udp=False)
    assert nat.forwards(Proto.TCP, 8080)
    assert not nat.forwards(Proto.UDP, 8080)
    assert nat.forwards(Proto.UDP, 5353)
    assert not nat.forwards(1, 8080)  # ICMP has no ports to forward
    assert NatForwarding(all_tcp=True).forwards(Proto.TCP, 1)
    assert not NatForwarding(all_tcp=True).forwards(Proto.UDP, 1)


# --- iptables-save edge cases ---------------------------------------------------------------


def ipt(*rules: str, chains: str = "") -> str:
    head = ["*filter", "-A INPUT -p tcp --dport 1 -j DNAT", "COMMIT", "*nat"]
    return "\n".join([*head, chains, *rules, "COMMIT", ""])


@pytest.mark.parametrize(
    ("rule", "tcp", "udp", "all_tcp", "all_udp"),
    [
        (
            "-A PREROUTING -p tcp -m tcp --dport :3 -j DNAT --to-destination 1.2.3.4",
            {0, 1, 2, 3},
            set(),
            False,
            False,
        ),
        (
            "-A PREROUTING -p udp -m udp --dport 65534: -j REDIRECT",
            set(),
            {65534, 65535},
            False,
            False,
        ),
        (
            "-A PREROUTING -p tcp -m tcp ! --dport 22 -j DNAT --to-destination 1.2.3.4",
            set(),
            set(),
            True,
            False,
        ),
        ("-A PREROUTING ! -p udp -j DNAT --to-destination 1.2.3.4", set(), set(), True, True),
        ("-A PREROUTING -p all -j DNAT --to-destination 1.2.3.4", set(), set(), True, True),
        (
            "-A PREROUTING -p 17 -m udp --dport 69 -j DNAT --to-destination 1.2.3.4",
            set(),
            {69},
            False,
            False,
        ),
        ("-A PREROUTING -p icmp -j DNAT --to-destination 1.2.3.4", set(), set(), False, False),
        ("-A OUTPUT -p tcp -m tcp --dport 80 -j MASQUERADE", set(), set(), False, False),
        (
            "-A POSTROUTING -p tcp -m tcp --dport 80 -j DNAT --to-destination 1.2.3.4",
            set(),
            set(),
            False,
            False,
        ),
        (
            '-A PREROUTING -p tcp -m comment --comment "a \\"quoted\\" -j X" --dport 8 -j DNAT',
            {8},
            set(),
            False,
            False,
        ),
        ("-A PREROUTING -p tcp -m multiport --dports 1,x -j DNAT", set(), set(), True, False),
    ],
)
def test_iptables_rule(
    rule: str, tcp: set[int], udp: set[int], all_tcp: bool, all_udp: bool
) -> None:
    got = forwarded_ports(None, ipt(rule))
    expected = (frozenset(tcp), frozenset(udp), all_tcp, all_udp)
    assert (got.tcp, got.udp, got.all_tcp, got.all_udp) == expected


def test_iptables_scope_narrows_through_jumps_and_goto() -> None:
    text = ipt(
        "-A PREROUTING -p tcp -m multiport --dports 10:20 -j A",
        "-A A -p tcp -m tcp --dport 15:30 -g B",
        "-A B -j DNAT --to-destination 1.2.3.4",
        "-A B -p udp -j DNAT --to-destination 1.2.3.4",
        chains=":A - [0:0]\n:B - [0:0]",
    )
    got = forwarded_ports(None, text)
    assert got.tcp == set(range(15, 21))
    assert got.udp == set()


def test_iptables_chain_loop_terminates() -> None:
    text = ipt(
        "-A PREROUTING -j A",
        "-A A -j B",
        "-A B -j A",
        "-A B -p udp --dport 5 -j REDIRECT",
        chains=":A - [0:0]\n:B - [0:0]",
    )
    assert forwarded_ports(None, text).udp == {5}


def test_iptables_table_without_commit_is_ignored() -> None:
    assert forwarded_ports(None, "*nat\n-A PREROUTING -j DNAT\n") == NatForwarding()


# --- nft JSON edge cases ----------------------------------------------------------------------


def nft_doc(*rules: list[Any], extra: list[dict[str, Any]] | None = None) -> str:
    chain = {"family": "inet", "table": "t", "name": "pre", "type": "nat", "hook": "prerouting"}
    objects: list[dict[str, Any]] = [{"chain": chain}, *(extra or [])]
    objects += [
        {"rule": {"family": "inet", "table": "t", "chain": "pre", "expr": r}} for r in rules
    ]
    return json.dumps({"nftables": objects})


def dport(proto: str, right: Any, op: str = "==") -> dict[str, Any]:
    left = {"payload": {"protocol": proto, "field": "dport"}}
    return {"match": {"op": op, "left": left, "right": right}}


DNAT = {"dnat": {"addr": "198.18.7.1"}}


def test_nft_wrapped_elements_and_numeric_strings() -> None:
    right = {"set": [{"elem": {"val": 80, "timeout": 30}}, "81", {"range": [82, 83]}]}
    got = forwarded_ports(nft_doc([dport("tcp", right), DNAT]), None)
    assert got.tcp == {80, 81, 82, 83}
    assert got.warnings == ()


def test_nft_negation_and_comparison_count_as_any_port() -> None:
    got = forwarded_ports(nft_doc([dport("udp", 53, op="!="), DNAT]), None)
    assert got.all_udp
    assert not got.all_tcp  # the negated udp match still implies udp
    got = forwarded_ports(nft_doc([dport("tcp", 1024, op="<"), DNAT]), None)
    assert got.all_tcp


def test_nft_unknown_port_value_warns_and_counts_as_any() -> None:
    got = forwarded_ports(nft_doc([dport("tcp", "http"), DNAT]), None)
    assert got.all_tcp
    assert not got.all_udp
    assert "http" in got.warnings[0]


def test_nft_th_dport_without_protocol_covers_tcp_and_udp() -> None:
    got = forwarded_ports(nft_doc([dport("th", 4000), {"redirect": None}]), None)
    assert got.tcp == {4000}
    assert got.udp == {4000}


def test_nft_ip_protocol_match_and_sctp_ignored() -> None:
    proto = {
        "match": {
            "op": "==",
            "left": {"payload": {"protocol": "ip", "field": "protocol"}},
            "right": 17,
        }
    }
    got = forwarded_ports(nft_doc([proto, DNAT], [dport("sctp", 9), DNAT]), None)
    assert got == NatForwarding(all_udp=True)


def test_nft_filter_chain_and_missing_jump_target_forward_nothing() -> None:
    chain = {"family": "inet", "table": "t", "name": "in", "type": "filter", "hook": "input"}
    rule = {"family": "inet", "table": "t", "chain": "in", "expr": [dport("tcp", 1), DNAT]}
    jump = [dport("tcp", 2), {"jump": {"target": "nowhere"}}]
    doc = json.loads(nft_doc(jump, extra=[{"chain": chain}, {"rule": rule}]))
    assert forwarded_ports(json.dumps(doc), None) == NatForwarding()


@pytest.mark.parametrize("text", ["not json", "[]", '{"nftables": 3}', '{"other": []}'])
def test_nft_bad_documents_warn(text: str) -> None:
    got = forwarded_ports(text, None)
    assert got == NatForwarding(warnings=got.warnings)
    assert len(got.warnings) == 1
    assert got.warnings[0].startswith("nft: output is not an nftables JSON document")


# --- running the tools ------------------------------------------------------------------------


def fake_tool(bindir: Path, name: str, body: str) -> None:
    path = bindir / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_read_nat_rules_runs_each_tool(tmp_path: Path) -> None:
    fake_tool(
        tmp_path, "nft", f'[ "$*" = "-j list ruleset" ] && cat {FIXTURES / "nft-kube-proxy.json"}'
    )
    fake_tool(
        tmp_path,
        "iptables-save",
        f'[ "$*" = "-t nat" ] && cat {FIXTURES / "docker-iptables-save.txt"}',
    )
    fake_tool(
        tmp_path,
        "ip6tables-save",
        f'[ "$*" = "-t nat" ] && cat {FIXTURES / "docker-ip6tables-save.txt"}',
    )
    got = read_nat_rules(timeout=10, path=str(tmp_path))
    assert got == NatForwarding(frozenset({443, 30080, 8080, 8443}), frozenset({53, 5353}))


def test_read_nat_rules_reports_failures_as_warnings(tmp_path: Path) -> None:
    fake_tool(tmp_path, "nft", "echo 'Error: Operation not permitted' >&2; exit 1")
    fake_tool(tmp_path, "iptables-save", "exec sleep 30")
    fake_tool(tmp_path, "ip6tables-save", f"cat {FIXTURES / 'docker-ip6tables-save.txt'}")
    got = read_nat_rules(timeout=0.5, path=str(tmp_path))
    assert got.tcp == {8443}
    assert got.warnings == (
        "nft -j list ruleset: exit status 1: Error: Operation not permitted",
        "iptables-save -t nat: no answer within 0.5 s",
    )


def test_read_nat_rules_without_tools_warns_once(tmp_path: Path) -> None:
    got = read_nat_rules(path=str(tmp_path))
    assert got == NatForwarding(
        warnings=("no NAT rule tool found (nft, iptables-save, ip6tables-save)",)
    )


def test_read_nat_rules_unrunnable_tool_is_a_warning(tmp_path: Path) -> None:
    (tmp_path / "nft").write_bytes(b"\x7fELF garbage")
    (tmp_path / "nft").chmod(0o755)
    got = read_nat_rules(path=str(tmp_path))
    assert len(got.warnings) == 1
    assert got.warnings[0].startswith("nft -j list ruleset: cannot run")
