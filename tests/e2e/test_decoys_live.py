"""End to end: a real ``nmap -sS -D decoy1,decoy2,ME`` against the daemon.

The daemon (``atcp,audp``, BLOCK_TCP 1, BAN_DURATION 1h, DECOY_BAN_DURATION 4m) runs in the
lab's target namespace, where a server listens on TCP 80. The two decoys' addresses are
assigned to the scanner's veth (198.18.0.0/15, inside the lab), so each answers the target's
SYN/ACK with an RST, as a framed live host would. The first copy of the first probe bans its
source for the full hour (no group yet); the next copy shows the group, and that ban is cut:
the store's end and the nftables element's timeout (inet and ingress sets) both come down to
at most 4 minutes; the other two are banned as decoys from the start. The alert names the
group; ``why`` shows it and the cut. Root, nmap and nft; every packet stays inside the lab.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import banlab
import netns
import nmapcapture
import pytest
from daemon import Daemon

from portsentinel.store.changes import CUT_AS_DECOY
from portsentinel.store.sqlite import Store

pytestmark = [pytest.mark.e2e]
_REASON = banlab.unavailable(("nmap", "nft"))
if _REASON:
    pytestmark.append(pytest.mark.skip(reason=_REASON))

DECOYS = ("198.18.0.3", "198.18.0.4")
DECOY_SECONDS = 240
HOUR = 3600


def _ingress_timeouts(lab: netns.Lab) -> dict[str, int | None]:
    done = lab.run(lab.target, ["nft", "-j", "list", "set", "netdev", "portsentinel", "ban4"],
                   check=False, timeout=10)  # fmt: skip
    if done.returncode != 0:
        return {}
    found: dict[str, int | None] = {}
    for item in json.loads(done.stdout)["nftables"]:
        for elem in item.get("set", {}).get("elem", []):
            if isinstance(elem, dict) and "elem" in elem:
                found[str(elem["elem"]["val"])] = elem["elem"].get("timeout")
            else:
                found[str(elem)] = None
    return found


def _holding(
    timeouts: dict[str, int | None] | None, addresses: list[str]
) -> dict[str, int | None] | None:
    return timeouts if timeouts is not None and set(addresses) <= set(timeouts) else None


def test_nmap_decoys_get_at_most_the_decoy_ban(tmp_path: Path) -> None:
    group = [*DECOYS, netns.Lab.SCANNER4]  # nmap sends the copies in the -D list's order
    settings = {"BAN_DURATION": "1h", "DECOY_BAN_DURATION": f"{DECOY_SECONDS}s"}
    with netns.Lab.create("pstd") as lab:
        for decoy in DECOYS:
            banlab.add_scanner_address(lab, decoy)
        nmapcapture.listen(lab, 80)
        daemon = Daemon.start(lab, tmp_path / "d", settings=settings)
        try:
            nmap = ["nmap", "-n", "-Pn", "--disable-arp-ping", "-sS", "--max-retries", "0",
                    "-D", f"{DECOYS[0]},{DECOYS[1]},ME", "-p", "1-40,80", lab.TARGET4]  # fmt: skip
            lab.run(lab.scanner, nmap, timeout=120)
            daemon.wait_for_line("ban cut to 240s as a decoy's", deadline=30)
            elements = banlab.wait_until(
                lambda: _holding(banlab.nft_elements(lab), group), "the three bans in the kernel"
            )
            ingress = banlab.wait_until(
                lambda: _holding(_ingress_timeouts(lab), group), "the three bans at ingress"
            )
            events = daemon.events()
            why = banlab.cli(lab, daemon, "why", DECOYS[0])
            why_me = banlab.cli(lab, daemon, "why", lab.SCANNER4)
        finally:
            daemon.stop()
    # The kernel: no element of the group outlives the decoy ban (a second of slack for the
    # time between the cut and the listing).
    for address in group:
        for where, timeouts in (("inet", elements), ("ingress", ingress)):
            timeout = timeouts[address]
            assert timeout is not None, (where, address, timeouts)
            assert timeout <= DECOY_SECONDS, (where, address, timeouts)
    # The store: every ban of the group ends within DECOY_BAN_DURATION of when it was made
    # or cut; the first one's cut is recorded.
    with Store.open(str(daemon.directory), offline=None) as store:
        bans = {b.address: b for b in store.bans_between(0.0, math.inf)}
        changes = {b.address: store.ban_changes(b.id) for b in bans.values()}
    assert set(group) <= set(bans)
    for address in group:
        ban = bans[address]
        assert ban.expires is not None
        cut = changes[address]
        start = cut[0].at if cut else ban.created
        assert ban.expires - start <= DECOY_SECONDS + 1e-6, (address, ban, cut)
    # The first copy's source (nmap sends them in the -D list's order) was banned for the
    # hour before the group showed, then cut; the others were decoys' bans from the start.
    assert [a for a in group if changes[a]] == [DECOYS[0]], changes
    [first] = changes[DECOYS[0]]
    assert first.change == CUT_AS_DECOY
    assert first.expires_before is not None
    assert first.expires_before - bans[DECOYS[0]].created == pytest.approx(HOUR, abs=1)
    # The alert names the group.
    blocks = [e for e in events if e["action"] == "block" and e["src"] in group]
    assert {e["src"] for e in blocks} == set(group)
    assert any(e.get("group") == group for e in blocks), blocks
    assert all(e.get("decoy") for e in blocks if e.get("group"))
    # why shows the group and the cut.
    assert why.returncode == 0, why.stderr
    assert "cut as decoy" in why.stdout, why.stdout
    assert why_me.returncode == 0, why_me.stderr
    assert f"group     {', '.join(group)}: banned as a decoy's" in why_me.stdout, why_me.stdout
    pairs = [(elements[a], ingress[a]) for a in group]
    print(f"decoys: {DECOYS[0]} cut; (inet, ingress) timeouts {pairs}")
