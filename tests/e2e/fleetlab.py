"""A fleet in namespaces: CrowdSec's LAPI (Debian's ``crowdsec``, API only), PortSentinel hosts
and a host with only ``crowdsec-firewall-bouncer`` (issue 12; shared by the e2e test and
``bench/fleet.py``).

Topology, on top of a ``netns.Lab`` (its target is host A, its scanner the attacker)::

    attacker 198.18.0.2 ----- A 198.18.0.1          (the lab's own veth)
    attacker 198.18.0.2 ----- B 198.18.2.1          (a veth of its own; B routes 198.18.0.2 to it)
    attacker 198.18.0.2 ----- D 198.18.4.1          (only with ``build(third=True)``)
    A 198.19.1.2 ---- LAPI 198.19.1.1
    B 198.19.2.2 ---- LAPI 198.19.2.1
    C 198.19.3.2 ---- LAPI 198.19.3.1               (crowdsec-firewall-bouncer only)
    D 198.19.4.2 ---- LAPI 198.19.4.1               (a third PortSentinel host, for sweeps)

Every link is made inside the namespaces, with static neighbours and no default route. LAPI's
config is written into a temporary directory (JSON, which YAML reads), with no Central API,
``max_open_conns: 1`` and a raised ``flush.max_items``: the set-up the README documents.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import netns

CROWDSEC = "/usr/bin/crowdsec"
CSCLI = "/usr/bin/cscli"
BOUNCER = "/usr/bin/crowdsec-firewall-bouncer"
LAPI_PORT = 8080
ATTACKER = "198.18.0.2"
B_ADDRESS = "198.18.2.1"
D_ADDRESS = "198.18.4.1"


def unavailable() -> str | None:
    reason = netns.unavailable()
    missing = [p for p in (CROWDSEC, CSCLI, BOUNCER, "/usr/sbin/nft") if not Path(p).exists()]
    if reason is None and missing:
        reason = f"needs {', '.join(missing)} (Debian's crowdsec and crowdsec-firewall-bouncer)"
    return reason


def link(lab: netns.Lab, a: str, a_if: str, a_addr: str, b: str, b_if: str, b_addr: str) -> None:  # noqa: PLR0917
    """A veth pair between two namespaces of the lab (created inside ``a``), static neighbours."""
    subprocess.run(["ip", "-n", a, "link", "add", a_if, "type", "veth", "peer", "name", b_if,
                    "netns", b], check=True, timeout=10)  # fmt: skip
    lab._links.update((a_if, b_if))
    for ns, dev, addr in ((a, a_if, a_addr), (b, b_if, b_addr)):
        subprocess.run(["ip", "-n", ns, "addr", "add", addr, "dev", dev], check=True, timeout=10)
        subprocess.run(["ip", "-n", ns, "link", "set", dev, "up"], check=True, timeout=10)
    lab.set_neighbour(a, a_if, b_addr.split("/", maxsplit=1)[0], lab.link_address(b, b_if))
    lab.set_neighbour(b, b_if, a_addr.split("/", maxsplit=1)[0], lab.link_address(a, a_if))


def _new_ns(lab: netns.Lab, role: str) -> str:
    prefix, _sep, tag = lab.target.rpartition("-t-")
    ns = f"{prefix}-{role}-{tag}"
    subprocess.run(["ip", "netns", "add", ns], check=True, timeout=10)
    lab._created.append(ns)
    subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True, timeout=10)
    return ns


@dataclass
class Fleet:
    lab: netns.Lab
    directory: Path
    lapi_ns: str = ""
    b_ns: str = ""
    c_ns: str = ""
    d_ns: str = ""
    lapi: subprocess.Popen[bytes] | None = None
    bouncer: subprocess.Popen[bytes] | None = None
    files: dict[str, Path] = field(default_factory=dict)

    # --- building -------------------------------------------------------------------------
    def build(self, *, third: bool = False) -> None:
        lab = self.lab
        self.lapi_ns, self.b_ns, self.c_ns = (_new_ns(lab, r) for r in ("l", "b", "c"))
        link(lab, self.lapi_ns, "l-a", "198.19.1.1/24", lab.target, "a-l", "198.19.1.2/24")
        link(lab, self.lapi_ns, "l-b", "198.19.2.1/24", self.b_ns, "b-l", "198.19.2.2/24")
        link(lab, self.lapi_ns, "l-c", "198.19.3.1/24", self.c_ns, "c-l", "198.19.3.2/24")
        self._attacked(self.b_ns, "b", B_ADDRESS)
        if third:
            self.d_ns = _new_ns(lab, "d")
            link(lab, self.lapi_ns, "l-d", "198.19.4.1/24", self.d_ns, "d-l", "198.19.4.2/24")
            self._attacked(self.d_ns, "d", D_ADDRESS)
        lab.check_closed()
        self._configure_lapi()

    def _attacked(self, ns: str, name: str, address: str) -> None:
        """The attacker reaches host ``name`` from its own address, over a link of its own."""
        lab = self.lab
        net = address.rsplit(".", 1)[0]
        link(lab, lab.scanner, f"s-{name}", f"{net}.2/24", ns, f"{name}-s", f"{address}/24")
        lab.run(lab.scanner, ["ip", "route", "replace", f"{address}/32", "dev", f"s-{name}",
                              "src", ATTACKER])  # fmt: skip
        lab.run(ns, ["ip", "route", "replace", f"{ATTACKER}/32", "dev", f"{name}-s"])
        lab.set_neighbour(ns, f"{name}-s", ATTACKER, lab.link_address(lab.scanner, f"s-{name}"))

    def _configure_lapi(self) -> None:
        d = self.directory / "lapi"
        (d / "data").mkdir(parents=True)
        base = Path("/etc/crowdsec")
        config = {
            "common": {"daemonize": False, "log_media": "file", "log_level": "info",
                       "log_dir": str(d), "working_dir": "."},
            "config_paths": {"config_dir": str(d), "data_dir": str(d / "data"),
                             "simulation_path": str(base / "simulation.yaml"),
                             "hub_dir": "/var/lib/crowdsec/hub/",
                             "index_path": "/var/lib/crowdsec/hub/.index.json",
                             "notification_dir": str(base / "notifications"),
                             "plugin_dir": "/usr/lib/crowdsec/plugins/"},
            "crowdsec_service": {"acquisition_path": str(d / "acquis.yaml")},
            "cscli": {"output": "human", "color": "no"},
            "db_config": {"type": "sqlite", "db_path": str(d / "data" / "crowdsec.db"),
                          "use_wal": True, "max_open_conns": 1, "log_level": "info",
                          "flush": {"max_items": 100000, "max_age": "7d"}},
            "api": {
                "client": {"credentials_path": str(d / "local_api_credentials.yaml")},
                "server": {"log_level": "info", "listen_uri": f"0.0.0.0:{LAPI_PORT}",
                           "profiles_path": str(base / "profiles.yaml"),
                           "console_path": str(d / "console.yaml"),
                           "trusted_ips": ["127.0.0.1", "::1"]},
            },
            "prometheus": {"enabled": False},
        }  # fmt: skip
        (d / "acquis.yaml").write_text("")
        (d / "console.yaml").write_text("")
        (d / "config.yaml").write_text(json.dumps(config, indent=1))
        self.files["config"] = d / "config.yaml"
        creds = str(d / "local_api_credentials.yaml")
        self.cscli("machines", "add", "cscli-admin", "--auto", "--url",
                   f"http://127.0.0.1:{LAPI_PORT}", "-f", creds)  # fmt: skip

    def cscli(self, *args: str, check: bool = True) -> str:
        # Inside LAPI's namespace: the verbs that talk to LAPI reach it on its loopback.
        done = subprocess.run(["ip", "netns", "exec", self.lapi_ns, CSCLI, "-c",
                               str(self.files["config"]), *args],
                              capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
        if check and done.returncode != 0:
            raise AssertionError(f"cscli {' '.join(args)}: {done.stderr}")
        return done.stdout

    def enroll(self, name: str, url: str) -> tuple[Path, Path]:
        """A machine and a bouncer key for a PortSentinel host: the two files."""
        d = self.directory / name
        d.mkdir(exist_ok=True)
        creds, key = d / "crowdsec-machine.yaml", d / "crowdsec-bouncer.key"
        self.cscli("machines", "add", f"{name}-portsentinel", "--auto", "--url", url,
                   "-f", str(creds))  # fmt: skip
        key.write_text(self.cscli("-oraw", "bouncers", "add", f"{name}-portsentinel").strip())
        return creds, key

    # --- running --------------------------------------------------------------------------
    def start_lapi(self) -> None:
        log = (self.directory / "lapi" / "stdout.log").open("ab")
        self.lapi = self.lab.start(self.lapi_ns, [CROWDSEC, "-c", str(self.files["config"]),
                                                  "-no-cs"], stdout=log, stderr=log)  # fmt: skip
        end = time.monotonic() + 30
        while time.monotonic() < end:
            done = self.lab.run(self.lapi_ns, ["python3", "-c", _HEALTH], check=False)
            if done.returncode == 0:
                return
            time.sleep(0.2)
        raise AssertionError("LAPI did not answer /health within 30 s")

    def stop_lapi(self) -> None:
        if self.lapi is not None:
            self.lab.stop(self.lapi)
            self.lapi = None

    def start_bouncer(self, update: str = "1s") -> None:
        d = self.directory / "c"
        d.mkdir(exist_ok=True)
        key = self.cscli("-oraw", "bouncers", "add", "c-firewall").strip()
        config = {
            "mode": "nftables", "pid_dir": str(d), "update_frequency": update,
            "daemonize": False, "log_mode": "file", "log_dir": str(d), "log_level": "info",
            "api_url": f"http://198.19.3.1:{LAPI_PORT}/", "api_key": key,
            "disable_ipv6": False, "deny_action": "DROP", "deny_log": False,
            "supported_decisions_types": ["ban"],
            "blacklists_ipv4": "crowdsec-blacklists", "blacklists_ipv6": "crowdsec6-blacklists",
            "nftables": {"ipv4": {"enabled": True, "set-only": False, "table": "crowdsec",
                                  "chain": "crowdsec-chain"},
                         "ipv6": {"enabled": True, "set-only": False, "table": "crowdsec6",
                                  "chain": "crowdsec6-chain"}},
            "prometheus": {"enabled": False, "listen_addr": "127.0.0.1", "listen_port": "60601"},
        }  # fmt: skip
        (d / "bouncer.yaml").write_text(json.dumps(config, indent=1))
        out = (d / "stdout.log").open("ab")
        self.bouncer = self.lab.start(self.c_ns, [BOUNCER, "-c", str(d / "bouncer.yaml")],
                                      stdout=out, stderr=out)  # fmt: skip

    def close(self) -> None:
        if self.bouncer is not None:
            self.lab.stop(self.bouncer)
        self.stop_lapi()


_HEALTH = (
    "import urllib.request,sys;"
    f"sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:{LAPI_PORT}/health',timeout=2)"
    ".status==200 else 1)"
)


def nft_set(lab: netns.Lab, ns: str, family: str, table: str, name: str) -> set[str] | None:
    """The addresses in a set of namespace ``ns`` (None: no such set)."""
    done = lab.run(ns, ["nft", "-j", "list", "set", family, table, name], check=False, timeout=10)
    if done.returncode != 0:
        return None
    found: set[str] = set()
    for item in json.loads(done.stdout)["nftables"]:
        for elem in item.get("set", {}).get("elem", []):
            value: Any = elem["elem"]["val"] if isinstance(elem, dict) and "elem" in elem else elem
            found.add(str(value))
    return found


def fleet_set(lab: netns.Lab, ns: str) -> set[str]:
    return nft_set(lab, ns, "inet", "portsentinel", "fleet4") or set()


def bouncer_set(lab: netns.Lab, ns: str) -> set[str]:
    return nft_set(lab, ns, "ip", "crowdsec", "crowdsec-blacklists") or set()


def health_url(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as rsp:
            return bool(rsp.status == 200)
    except OSError:
        return False


def which(tool: str) -> str:
    return shutil.which(tool) or tool
