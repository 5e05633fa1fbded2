"""The daemon's outputs to other programs, live: the Prometheus endpoint and the webhook."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import netns
import pytest
from banlab import nmap_scan, unavailable, wait_until
from daemon import Daemon

_REASON = netns.unavailable() or unavailable(("nmap", "nft"))
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(_REASON is not None, reason=_REASON or "")]

SCRAPE = """
import sys, urllib.request
print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())
"""

# A webhook receiver on the target's loopback: every POST body goes to a file, one per line.
RECEIVER = """
import http.server, sys
class Hook(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with open(sys.argv[2], "ab") as out:
            out.write(body.replace(b"\\n", b" ") + b"\\n")
        self.send_response(204)
        self.end_headers()
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Hook)
print("ready", flush=True)
server.serve_forever()
"""


@pytest.fixture
def lab() -> Iterator[netns.Lab]:
    with netns.Lab.create("psout") as lab:
        yield lab


def test_metrics_endpoint_and_webhook(lab: netns.Lab, tmp_path: Path) -> None:
    posts = tmp_path / "posts.jsonl"
    receiver = lab.start(
        lab.target,
        [sys.executable, "-c", RECEIVER, "18080", str(posts)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert receiver.stdout is not None
    assert receiver.stdout.readline().strip() == "ready"
    settings = {
        "METRICS_LISTEN": "127.0.0.1:19469",
        "WEBHOOK_URL": "http://127.0.0.1:18080/hook",
        "BAN_DURATION": "1h",
    }
    daemon = Daemon.start(lab, tmp_path / "d", mode="atcp,audp", settings=settings)
    nmap_scan(lab, lab.SCANNER4, "1-20")
    wait_until(lambda: (posts.exists() and posts.read_text()) or None, "a webhook POST")
    hook = json.loads(posts.read_text().splitlines()[0])
    assert (hook["src"], hook["action"], hook["proto"]) == (lab.SCANNER4, "block", "tcp")
    assert hook["ban"]["target"] == lab.SCANNER4  # the notification waited for the ban
    assert hook["ban"]["offence"] == 1
    scrape = lab.run(
        lab.target, [sys.executable, "-c", SCRAPE, "http://127.0.0.1:19469/metrics"]
    ).stdout
    values = {
        line.split(" ")[0]: float(line.split(" ")[-1])
        for line in scrape.splitlines()
        if line and not line.startswith("#")
    }
    assert values['portsentinel_probes_total{kind="SYN"}'] >= 1
    assert values["portsentinel_kernel_drops_total"] == 0
    assert any(k.startswith("portsentinel_bans_active") for k in values)
    code, _stderr = daemon.stop()
    assert code == 0
    lab.stop(receiver)
