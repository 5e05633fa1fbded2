"""``why`` and ``history`` for people: the views of ``cli/history_views.py`` as text, a
headline and one ``  name  value`` line per fact for ``why``, a table for ``history``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Final

from portsentinel.cli.tables import Column, Row


def ports_line(ports: object) -> str:
    """``{"tcp": "1-20", "udp": "53"}`` as ``tcp 1-20; udp 53``; ``-`` for none."""
    if not isinstance(ports, Mapping) or not ports:
        return "-"
    return "; ".join(f"{proto} {text}" for proto, text in ports.items())


def why_lines(view: Mapping[str, Any]) -> Iterator[str]:
    """The human text of ``why``: a headline, then one ``  name  value`` line per fact."""
    ban, probes = view["ban"], view["probes"]
    yield f"{view['src']}: {_headline(ban, probes)}\n"
    if ban is not None:
        yield from _ban_lines(ban)
    elif view["rule"]:
        yield _field("rule", view["rule"])
    if probes is not None:
        yield from _probe_lines(probes)
    for d in view.get("fleet") or []:
        note = f" ({d['note']})" if d["note"] else ""
        text = f"decision #{d['id']} {d['origin']} {d['scenario']} until {d['until']}"
        yield _field("fleet", f"{text}: {d['state']}{note}")
    reported = view.get("reported_by")
    if isinstance(reported, str):
        yield _field("reported", f"(not known: {reported})")
    elif isinstance(reported, list):
        for r in reported:
            what = "ban" if r["decision"] else "report"
            yield _field("reported", f"by {r['machine']} at {r['at']}: {r['scenario']} ({what})")


def _headline(ban: Mapping[str, Any] | None, probes: Mapping[str, Any] | None) -> str:
    if ban is None and not probes:
        return "banned by the fleet"
    if ban is None:
        alerted = probes is not None and probes["alerts"]
        return "alerted, never banned" if alerted else "probes recorded, never banned"
    live = ban["state"] in ("pending", "active")
    text = f"banned ({ban['state']})" if live else f"was banned ({ban['state']})"
    if "/" in ban["address"]:
        text += f" with its prefix {ban['address']}"
    if ban["offline"]:
        text += ", a replay's record: never applied"
    return text


def _field(name: str, value: object) -> str:
    return f"  {name:<10}{value}\n"


def _ban_lines(ban: Mapping[str, Any]) -> Iterator[str]:
    yield _field("ban", f"#{ban['id']} {ban['action']}, offence {ban['offence']}")
    yield _field("since", ban["since"])
    yield _field("until", "permanent" if ban["until"] is None else ban["until"])
    if ban["ended"] is not None:
        yield _field("ended", f"{ban['ended']} by {ban['lifted_by']}")
    yield _field("reason", ban["reason"])
    yield _field("rule", ban["rule"] or "-")
    yield _field("evidence", _evidence_text(ban["evidence"]))
    decoy = ban["evidence"].get("decoy")
    if isinstance(decoy, Mapping) and not ban.get("changes"):
        members = ", ".join(str(m) for m in decoy.get("members", ()))
        yield _field("group", f"{members}: banned as a decoy's{_wire_text(decoy)}")
    for change in ban.get("changes", ()):
        yield _field(
            "cut",
            f"{change['time']}: {change['change']}, until {change['after']} instead of "
            f"{change['before'] or 'permanent'}",
        )
        yield _field("group", ", ".join(change["group"]) + _wire_text(change["evidence"]))
    dropped = ban.get("dropped")
    if dropped is not None:
        packets, size = dropped["packets"], dropped["bytes"]
        yield _field("dropped", f"{packets} packets ({size} bytes) at ingress since the ban")
    actions = ban["actions"]
    if not actions:
        plan = ", ".join(ban["evidence"].get("plan") or ()) or "-"
        none = "none: offline record" if ban["offline"] else "none recorded"
        yield _field("actions", f"{none} (plan: {plan})")
    for i, action in enumerate(actions):
        text = f"{action['backend']} {action['state']}"
        if action["attempts"] > 1:
            text += f" ({action['attempts']} attempts)"
        if action["error"]:
            text += f": {action['error']}"
        yield _field("actions" if i == 0 else "", text)
    if any(action["state"] == "uncertain" for action in actions):
        address = ban["address"].split("/")[0]
        yield _field(
            "to do",
            f"uncertain: check what the command did for {ban['address']}; to run it again: "
            f"portsentinel unblock {address}, then portsentinel block {address}",
        )


def _wire_text(evidence: Mapping[str, Any]) -> str:
    """What the wire showed of a decoy group's member (``detect/decoys.py``)."""
    parts = []
    if evidence.get("probe_ttls"):
        parts.append("probe TTL " + "/".join(str(t) for t in evidence["probe_ttls"]))
    if evidence.get("earlier_ttl") is not None:
        agrees = "agrees" if evidence.get("ttl_agrees") else "differs"
        parts.append(f"earlier traffic's TTL {evidence['earlier_ttl']} ({agrees})")
    if evidence.get("one_source_port"):
        parts.append("all from one source port: copies of one probe")
    return f"; {'; '.join(parts)}" if parts else ""


def _evidence_text(evidence: Mapping[str, Any]) -> str:
    parts = []
    hits = evidence.get("hits")
    if isinstance(hits, int):
        parts.append(f"{hits} hit" if hits == 1 else f"{hits} hits")
    parts.append(f"ports {ports_line(evidence.get('ports'))}")
    if evidence.get("kinds"):
        parts.append("kinds " + ",".join(str(k) for k in evidence["kinds"]))
    if evidence.get("first_seen"):
        parts.append(f"seen {evidence['first_seen']} to {evidence.get('last_seen')}")
    return "; ".join(parts)


def _probe_lines(probes: Mapping[str, Any]) -> Iterator[str]:
    count = f"{probes['count']}" + ("" if probes["complete"] else " (the newest only)")
    yield _field("probes", f"{count}, {probes['first']} to {probes['last']}")
    yield _field("kinds", _counts(probes["kinds"]))
    yield _field("ports", f"{ports_line(probes['ports'])} ({probes['port_count']} distinct)")
    if len(probes["sources"]) > 1:
        yield _field("from", _some(probes["sources"]))
    yield _field("to", _some(probes["destinations"]))
    yield _field("decisions", _counts(probes["decisions"]))
    score = probes.get("score")
    if score:
        decided = score["decided_after"]
        after = f"; decided after {decided}" if decided is not None else "; no decision yet"
        yield _field(
            "trw score",
            f"likelihood ratio {score['ratio']:.4g} after {score['contacts']} first contacts"
            + after,
        )
    for group in probes.get("groups", ())[:3]:
        yield _field("group", ", ".join(group) + " (probed the same ports at the same moments)")
    if probes.get("scanners"):
        yield _field("scanner", ", ".join(probes["scanners"]) + " (from the probes' marks)")
    for alert in probes["alerts"]:
        yield _field(
            "alerted", f"{alert['time']} ({alert['proto']} {alert['port']}, {alert['kind']})"
        )


def _counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{name} {n}" for name, n in counts.items())


def _some(items: Sequence[str], most: int = 8) -> str:
    more = f" (+{len(items) - most})" if len(items) > most else ""
    return ", ".join(items[:most]) + more


def _until_cell(row: Row) -> str:
    if row.get("ban_id") is None:
        return "-"
    until = row.get("until")
    return "permanent" if until is None else str(until)[:19]


HISTORY_COLUMNS: Final = (
    Column("TIME", "time", lambda v: str(v)[:19]),
    Column("SRC", "src"),
    Column("ACTION", "action"),
    Column("STATE", "state"),
    Column("UNTIL", "until", cell=_until_cell),
    Column("REASON", "reason", shrink=True),
    Column("PORTS", "ports", ports_line, shrink=True),
)
