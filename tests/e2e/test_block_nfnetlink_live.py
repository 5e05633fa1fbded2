"""End to end: set elements sent by ``block/nfnetlink.py`` reach the real kernel's sets and
drop the real traffic, in a fresh lab.

The writer's socket belongs to the namespace of the process that opens it, so it runs in a
child inside the target namespace (``WRITER``); the test checks the result with the real
``nft`` program there and with traffic from the scanner (a banned address and another).
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import sys
from collections.abc import Iterator

import netns
import pytest
from banlab import netdev_elements, nft_elements
from test_block_backends import BANNED4, BANNED6, OTHER4, OTHER6, banning_lab, expect

_REASON = netns.unavailable()
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(_REASON is not None, reason=_REASON or ""),
    pytest.mark.skipif(shutil.which("nft") is None, reason="needs the nft command"),
]

# In the target namespace: the daemon's structure (the backend's own start), then elements
# through the writer; prints one JSON line of outcomes.
WRITER = r"""
import ipaddress, json, sys
from portsentinel.block.nfnetlink import ElementWriter
from portsentinel.block.nftables import NftablesBackend
from portsentinel.block.runner import Runner
from portsentinel.errors import BackendError

banned4, banned6 = sys.argv[1:3]
NftablesBackend(Runner()).start()
writer = ElementWriter("portsentinel")
key = lambda text: ipaddress.ip_address(text).packed
writer.add("ban4", [(key(banned4), 600_000)])
writer.add("ban6", [(key(banned6), None)])
writer.add("ban4", [(key(banned4), 5_000)])  # again: accepted
many = [(key(f"198.19.{n // 256}.{n % 256}"), 600_000) for n in range(10_000)]
writer.add("ban4", many)
outcome = {}
try:
    writer.add("no_such_set", [(key(banned4), None)])
except BackendError as exc:
    outcome["refused"] = str(exc)
writer.add("ban4", [(key("198.18.0.77"), 1_000)])  # the socket still works after a refusal
writer.close()
print(json.dumps(outcome))
"""

# The first ban's own way: one element from a datagram built in advance, into the inet set and
# its netdev copy (``ingress.py``) in one transaction; without the netdev table (a backend
# without ingress), the inet set alone (the transaction is sent again without the copy).
ONE = r"""
import ipaddress, json, sys
from portsentinel.block.nfnetlink import ElementWriter
from portsentinel.block.nftables import NftablesBackend
from portsentinel.block.runner import Runner

banned4, banned6, netdev = sys.argv[1:4]
NftablesBackend(Runner(), ingress=netdev == "1").start()
writer = ElementWriter("portsentinel", mirror="portsentinel")
writer.prepare("ban4", 4, 600_000)
writer.open()
writer.add_one("ban4", ipaddress.ip_address(banned4).packed, 600_000)
writer.add_one("ban6", ipaddress.ip_address(banned6).packed, None)  # built on first use
writer.add_one("ban4", ipaddress.ip_address("198.18.0.78").packed, 600_000)  # filled again
alone = ipaddress.ip_address("198.18.0.79").packed
writer.add_one("ban4", alone, 600_000, mirror=False)  # the inet set alone, then its copy
print(json.dumps({"copied": writer.copy("ban4", [(alone, 600_000)])}))
writer.close()
"""


def netdev_keys(lab: netns.Lab, name: str) -> set[str]:
    """The addresses in ``netdev portsentinel``'s set ``name``."""
    return {str(element["val"]) for element in netdev_elements(lab, name)}


@pytest.fixture
def lab() -> Iterator[netns.Lab]:
    with banning_lab("psn") as lab:
        yield lab


def test_elements_sent_by_netlink_are_in_the_sets_and_drop_the_banned(lab: netns.Lab) -> None:
    expect(lab, dropped=[], passing=[BANNED4, BANNED6, OTHER4])
    done = lab.run(lab.target, [sys.executable, "-c", WRITER, BANNED4, BANNED6], timeout=60)
    outcome = json.loads(done.stdout)
    assert "No such file or directory" in outcome["refused"]
    four = nft_elements(lab, 4)
    six = nft_elements(lab, 6)
    assert four is not None
    assert six is not None
    # The second add is accepted; whether it replaced the timeout depends on the kernel
    # (6.18 updates an existing element's timeout, older kernels keep it).
    assert four[BANNED4] in (5, 600)
    assert six == {BANNED6: None}  # permanent
    assert sum(1 for key in four if key.startswith("198.19.")) == 10_000
    expect(lab, dropped=[BANNED4, BANNED6], passing=[OTHER4, OTHER6])


# In the target namespace: a set like the daemon's ssh4, asked through SetReader; prints the
# answers as one JSON line.
READER = r"""
import ipaddress, json, subprocess, sys
from portsentinel.block.nfnetlink import SetReader

subprocess.run(["nft", "-f", "-"], check=True, text=True, input=(
    "add table inet portsentinel\n"
    "add set inet portsentinel ssh4 { type ipv4_addr; flags timeout; timeout 15m; }\n"
    "add element inet portsentinel ssh4 { 198.18.0.5 }\n"))
key = lambda text: ipaddress.ip_address(text).packed
now = [0.0]
reader = SetReader("portsentinel", clock=lambda: now[0])
answers = [reader.contains("ssh4", key("198.18.0.5")), reader.contains("ssh4", key("198.18.0.6")),
           reader.contains("nope", key("198.18.0.5"))]
subprocess.run(["nft", "delete", "table", "inet", "portsentinel"], check=True)
answers.append(reader.contains("ssh4", key("198.18.0.6")))  # seen a moment ago: still there
now[0] = 20.0
answers.append(reader.contains("ssh4", key("198.18.0.6")))  # asked again: gone
reader.touch("ssh4")
answers.append(reader.contains("ssh4", key("198.18.0.6")))  # known to be gone: no guess
reader.close()
print(json.dumps(answers))
"""


def test_a_set_is_asked_for_one_key_and_a_missing_set_is_not_taken_for_a_no(
    lab: netns.Lab,
) -> None:
    done = lab.run(lab.target, [sys.executable, "-c", READER], timeout=60)
    assert json.loads(done.stdout) == [True, False, None, False, None, None]


# In the target namespace: the backend with its ingress table, then quiet elements (a source
# and a protocol) added and deleted through a writer of the netdev family; prints the outcomes.
QUIET = r"""
import ipaddress, json, subprocess, sys
from portsentinel.block import quiet
from portsentinel.block.nfnetlink import NFPROTO_NETDEV, ElementWriter
from portsentinel.block.nftables import NftablesBackend
from portsentinel.block.runner import Runner

NftablesBackend(Runner(), ingress=True).start()
writer = ElementWriter("portsentinel", family=NFPROTO_NETDEV)
four, six = (ipaddress.ip_address(text).packed for text in sys.argv[1:3])
writer.add("quiet4", [(quiet.element_key(four, 6), 60_000), (quiet.element_key(four, 17), 60_000)])
writer.add("quiet6", [(quiet.element_key(six, 17), 60_000)])
listed = lambda name: subprocess.run(["nft", "-j", "list", "set", "netdev", "portsentinel", name],
                                     capture_output=True, text=True, check=True).stdout
added = {name: sorted(quiet.element_counts({name: json.loads(listed(name))["nftables"][1]["set"]}))
         for name in ("quiet4", "quiet6")}
deleted = writer.delete("quiet4", [quiet.element_key(four, 6), quiet.element_key(four, 6)])
left = sorted(quiet.element_counts({"quiet4": json.loads(listed("quiet4"))["nftables"][1]["set"]}))
print(json.dumps({"added": {k: [[a.hex(), p] for a, p in v] for k, v in added.items()},
                  "deleted": deleted, "left": [[a.hex(), p] for a, p in left]}))
"""


def test_quiet_elements_reach_the_netdev_sets_and_leave_them(lab: netns.Lab) -> None:
    done = lab.run(lab.target, [sys.executable, "-c", QUIET, BANNED4, BANNED6], timeout=60)
    outcome = json.loads(done.stdout)
    four = bytes(int(part) for part in BANNED4.split(".")).hex()
    six = ipaddress.ip_address(BANNED6).packed.hex()
    assert outcome["added"] == {"quiet4": [[four, 6], [four, 17]], "quiet6": [[six, 17]]}
    assert outcome["deleted"] == 1  # the second delete found nothing, and is no error
    assert outcome["left"] == [[four, 17]]


def test_the_first_bans_prebuilt_element_reaches_both_tables_and_drops(lab: netns.Lab) -> None:
    done = lab.run(lab.target, [sys.executable, "-c", ONE, BANNED4, BANNED6, "1"], timeout=60)
    assert done.returncode == 0, done.stderr
    four, six = nft_elements(lab, 4), nft_elements(lab, 6)
    assert four is not None
    assert six is not None
    assert four[BANNED4] == 600
    assert four["198.18.0.78"] == 600
    assert four["198.18.0.79"] == 600
    assert six == {BANNED6: None}
    assert json.loads(done.stdout) == {"copied": True}
    assert netdev_keys(lab, "ban4") == {BANNED4, "198.18.0.78", "198.18.0.79"}
    assert netdev_keys(lab, "ban6") == {BANNED6}
    expect(lab, dropped=[BANNED4, BANNED6], passing=[OTHER4, OTHER6])


def test_without_the_netdev_copy_the_prebuilt_element_goes_to_the_inet_set(
    lab: netns.Lab,
) -> None:
    done = lab.run(lab.target, [sys.executable, "-c", ONE, BANNED4, BANNED6, "0"], timeout=60)
    assert done.returncode == 0, done.stderr
    four = nft_elements(lab, 4)
    assert four is not None
    assert four[BANNED4] == 600
    assert four["198.18.0.79"] == 600
    assert json.loads(done.stdout) == {"copied": False}  # no netdev table: nothing to copy to
    assert netdev_keys(lab, "ban4") == set()
    expect(lab, dropped=[BANNED4], passing=[OTHER4])
