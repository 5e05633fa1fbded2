"""Decoy groups on synthetic probes: what links sources, what does not, and the bounds."""

from __future__ import annotations

from portsentinel.detect import decoys
from portsentinel.detect.decoys import DecoyGroups, Group

HOST = bytes([198, 18, 0, 1])
ME = bytes([198, 18, 0, 2])
D1 = bytes([198, 18, 1, 1])
D2 = bytes([198, 18, 1, 2])


def decoy_round(groups: DecoyGroups, port: int, now: float, ttl: int = 50) -> list[Group | None]:
    """One probe of ``nmap -D D1,D2,ME``: the same port from each, microseconds apart."""
    return [
        groups.see(src, 6, port, HOST, ttl, now + i * 1e-5) for i, src in enumerate((D1, D2, ME))
    ]


def test_without_copies_two_shared_ports_counted_make_a_group() -> None:
    """Each source from its own source port (no copies): co-occurrences count from a
    source's second probe on, so the group shows on the third port."""
    groups = DecoyGroups()
    assert decoy_round(groups, 1, 0.0) == [None, None, None]
    assert decoy_round(groups, 2, 0.01) == [None, None, None]
    found = decoy_round(groups, 3, 0.02)
    group = found[-1]
    assert group is not None
    assert list(group.members) == [D1, D2, ME]  # in the order they joined
    assert found[1] is group  # D2 linked with D1 on its third probe
    assert groups.group_of(D1) is group
    assert len(groups) == 1
    assert groups.formed == 1


def test_probes_further_apart_than_the_window_do_not_link() -> None:
    groups = DecoyGroups()
    for n, port in enumerate(range(1, 20)):
        now = n * 10.0
        groups.see(D1, 6, port, HOST, 50, now)
        groups.see(ME, 6, port, HOST, 50, now + decoys.WINDOW + 0.01)
    assert groups.group_of(ME) is None


def test_independent_scanners_sharing_few_ports_stay_apart() -> None:
    """Two scans of one host at once, meeting on a port now and then: a few shared probes
    out of many are no decoy copies."""
    groups = DecoyGroups()
    now = 0.0
    for port in range(1, 200):
        now += 0.01
        groups.see(D1, 6, port, HOST, 50, now)
        groups.see(ME, 6, 1000 + port, HOST, 57, now)
        if port % 20 == 0:  # every 20th port the same one, at the same moment
            groups.see(ME, 6, port, HOST, 57, now)
    assert groups.group_of(ME) is None


def test_other_destinations_and_protocols_are_other_slots() -> None:
    groups = DecoyGroups()
    other_host = bytes([198, 18, 0, 9])
    for port in range(1, 10):
        groups.see(D1, 6, port, HOST, 50, port)
        groups.see(ME, 6, port, other_host, 50, port)
        groups.see(D2, 17, port, HOST, 50, port)
    assert groups.group_of(D1) is None
    assert groups.group_of(D2) is None


def test_retransmissions_on_one_port_count_once() -> None:
    groups = DecoyGroups()
    for i in range(5):
        groups.see(D1, 6, 7, HOST, 50, i * 0.01)
        groups.see(ME, 6, 7, HOST, 50, i * 0.01)
    assert groups.group_of(ME) is None


def test_two_groups_merge_through_a_shared_member() -> None:
    groups = DecoyGroups()
    d3 = bytes([198, 18, 1, 3])
    for port in (1, 2, 3):
        groups.see(D1, 6, port, HOST, 50, port)
        groups.see(D2, 6, port, HOST, 50, port)
    for port in (11, 12, 13):
        groups.see(d3, 6, port, HOST, 50, port)
        groups.see(ME, 6, port, HOST, 50, port)
    assert groups.group_of(D1) is not groups.group_of(ME)
    # D2 and ME meet on most of their probes from now on (half of the quieter's, at least).
    for port in range(21, 26):
        groups.see(D2, 6, port, HOST, 50, port)
        groups.see(ME, 6, port, HOST, 50, port)
    merged = groups.group_of(D1)
    assert merged is not None
    assert set(merged.members) == {D1, D2, d3, ME}
    assert all(groups.group_of(s) is merged for s in (D1, D2, d3, ME))
    assert len(groups) == 1


def test_ttl_evidence_same_sender_and_earlier_traffic() -> None:
    groups = DecoyGroups()
    groups.heard(D1, 61, 0.0)  # a connection of D1's to a port in use, long before
    groups.heard(ME, 50, 299.0)  # ... and one of ME's within the scan: not "earlier"
    for n, port in enumerate((1, 2, 3)):
        decoy_round(groups, port, 300.0 + n * 0.01, ttl=50)
    group = groups.group_of(ME)
    assert group is not None
    assert group.one_ttl
    d1 = group.evidence(D1)
    assert d1["probe_ttls"] == [50]
    assert (d1["earlier_ttl"], d1["ttl_agrees"]) == (61, False)
    me = group.evidence(ME)
    assert (me["earlier_ttl"], me["ttl_agrees"]) == (None, None)
    assert group.evidence(D2)["one_ttl"] is True


def test_different_ttls_are_told() -> None:
    groups = DecoyGroups()
    for port in (1, 2, 3):
        groups.see(D1, 6, port, HOST, 40, port)
        groups.see(ME, 6, port, HOST, 55, port)
    group = groups.group_of(ME)
    assert group is not None
    assert not group.one_ttl


def test_a_flood_of_forged_sources_stays_bounded() -> None:
    """Random sources on a few ports at once: no pair shares two ports, the tables stay
    within their caps."""
    groups = DecoyGroups()
    for i in range(decoys.MAX_SOURCES + 5000):
        src = (0xC6120000 + i).to_bytes(4, "big")
        groups.see(src, 6, 1 + i % 3, HOST, 50, i * 1e-5)
    assert len(groups) == 0
    assert len(groups._probes) <= decoys.MAX_SOURCES
    assert len(groups._pairs) <= decoys.MAX_PAIRS
    assert len(groups._slots) <= decoys.MAX_SLOTS
    assert all(len(slot) <= decoys.SLOT_SOURCES for slot in groups._slots.values())


def test_a_flood_from_one_source_port_forms_bounded_groups() -> None:
    """Forged sources, one source port, one port, at once: copies of one probe to the
    module, so they are linked (their bans are short), within the caps."""
    groups = DecoyGroups()
    for i in range(decoys.MAX_SOURCES + 5000):
        src = (0xC6120000 + i).to_bytes(4, "big")
        groups.see(src, 6, 1 + i % 3, HOST, 50, i * 1e-5, sport=40000)
    assert 0 < len(groups) <= decoys.MAX_GROUPS
    assert all(len(g.members) <= decoys.MAX_MEMBERS for g in groups._groups.values())
    assert len(groups._slots) <= decoys.MAX_SLOTS
    # every source was grouped while it came; in all, about the last MAX_GROUPED stay (the
    # oldest group goes whole)
    assert decoys.MAX_GROUPED - decoys.MAX_MEMBERS <= len(groups._of) <= decoys.MAX_GROUPED
    assert sum(len(g.members) for g in groups._groups.values()) == len(groups._of)
    assert all(groups._of[src] is g for g in groups._groups.values() for src in g.members)
    newest = (0xC6120000 + decoys.MAX_SOURCES + 4999).to_bytes(4, "big")
    assert groups.group_of(newest) is not None


def test_groups_and_members_are_capped() -> None:
    """nmap -D RND:100 from one sender: one group of MAX_MEMBERS at most."""
    groups = DecoyGroups()
    sources = [(0xC6130000 + i).to_bytes(4, "big") for i in range(100)]
    for port in range(1, 6):
        for i, src in enumerate(sources):
            groups.see(src, 6, port, HOST, 50, port + i * 1e-5)
    grouped = {id(groups.group_of(s)) for s in sources if groups.group_of(s) is not None}
    assert all(len(g.members) <= decoys.MAX_MEMBERS for g in groups._groups.values())
    assert len(grouped) >= 1


def test_copies_of_one_probe_share_their_source_port() -> None:
    """nmap gives each decoy copy its own random TTL but one source port (and sequence
    number, and IPv4 ID): the group tells so."""
    groups = DecoyGroups()
    for port, ttls in ((1, (43, 43, 52)), (2, (54, 39, 39))):
        for i, (src, ttl) in enumerate(zip((D1, D2, ME), ttls, strict=True)):
            groups.see(src, 6, port, HOST, ttl, port + i * 1e-5, sport=35629)
    group = groups.group_of(ME)
    assert group is not None
    assert group.one_source_port
    assert not group.one_ttl
    other = DecoyGroups()
    for port in (1, 2, 3):
        other.see(D1, 6, port, HOST, 50, port, sport=1000 + port)
        other.see(ME, 6, port, HOST, 50, port, sport=2000 + port)
    grouped = other.group_of(ME)
    assert grouped is not None
    assert not grouped.one_source_port


def test_copies_of_one_probe_link_on_the_first_port() -> None:
    """Live, each source is banned on its first probe and its next ones are dropped at
    ingress: the first round's copies (one port, one source port, at once) must do."""
    groups = DecoyGroups()
    found = [
        groups.see(src, 6, 80, HOST, 40 + i, i * 1e-5, sport=35629)
        for i, src in enumerate((D1, D2, ME))
    ]
    assert found[0] is None
    group = found[2]
    assert group is not None
    assert list(group.members) == [D1, D2, ME]


def test_one_port_without_copies_links_nobody() -> None:
    """Two sources on one port at once, each from its own source port (or a copy too late):
    no group on one port."""
    groups = DecoyGroups()
    groups.see(D1, 6, 80, HOST, 50, 0.0, sport=1111)
    groups.see(ME, 6, 80, HOST, 50, 0.0, sport=2222)
    groups.see(D2, 6, 80, HOST, 50, decoys.COPY_WINDOW + 0.01, sport=1111)
    assert groups.group_of(ME) is None
    assert groups.group_of(D2) is None
