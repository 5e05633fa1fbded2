"""The Debian package end to end: ``scripts/build-deb`` builds it, lintian reads it, and a
booted container (``nspawn.py``: this machine's systemd over an overlay, private network)
installs it with apt, sees the service start as the user portsentinel from the package's own
files, bans a scan, and then stops, removes and purges it, recording what each step leaves.
A stand-in ``portsentry`` package shows what apt does with Debian's PortSentry (Conflicts).

The container runs only what the package installed: /usr/sbin/portsentinel and Debian's
python3 with /usr/lib/python3/dist-packages/portsentinel; this checkout is not on its path.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import nspawn
import pytest

from portsentinel import __version__

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
DEB = f"portsentinel_{__version__}_all.deb"


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("dpkg-deb") is None:
        pytest.skip("dpkg-deb is absent")
    out = tmp_path_factory.mktemp("deb")
    done = subprocess.run(
        [str(REPO / "scripts" / "build-deb"), str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(out / DEB)
    return out / DEB


@pytest.mark.skipif(shutil.which("lintian") is None, reason="lintian is absent")
def test_lintian_finds_nothing_unexplained(deb: Path) -> None:
    done = subprocess.run(
        ["lintian", "-I", "-E", "--pedantic", "--show-overrides", str(deb)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    tags = [line for line in done.stdout.splitlines() if not line.startswith("N:")]
    # Each override is explained in the package (/usr/share/lintian/overrides/portsentinel).
    assert sorted(tags) == [
        "O: portsentinel: non-standard-file-perm 0640 != 0644 [etc/portsentinel/portsentinel.conf]",
        "O: portsentinel: package-supports-alternative-init-but-no-init.d-script "
        "[lib/systemd/system/portsentinel.service]",
    ], done.stdout + done.stderr


STANDIN = """\
Package: portsentry
Version: 1.2-16
Architecture: all
Maintainer: PortSentinel tests <tests@example.org>
Description: stand-in for Debian's portsentry (PortSentinel's package test)
 Only its name matters: portsentinel conflicts with it.
"""

INNER = r"""#!/bin/sh
exec >/out/log.txt 2>&1
echo booted >/out/booted
set -x
SCANNER_SETUP
export DEBIAN_FRONTEND=noninteractive
apt-get install -y /out/@DEB@ >/out/install.txt 2>&1
echo "$?" >/out/install.rc
wait_for started 1
systemctl is-active portsentinel.service >/out/active
systemctl is-enabled portsentinel.service >/out/enabled
systemctl show -p ExecStart -p FragmentPath -p User -p MainPID portsentinel.service >/out/show
pid=$(systemctl show -p MainPID --value portsentinel.service)
tr '\0' ' ' </proc/$pid/cmdline >/out/cmdline
python3 -c 'import portsentinel; print(portsentinel.__file__)' >/out/module
stat -c '%U:%G %a' /etc/portsentinel/portsentinel.conf >/out/conf
zcat /usr/share/man/man8/portsentinel.8.gz | head -5 >/out/man
setup_scanner scan1 198.18.10.2 198.18.10.1
ip netns exec scan1 nmap -sS -Pn -n -p 1-100 --max-retries 0 198.18.10.1
wait_for set_has 198.18.10.2
portsentinel list >/out/list
# the metrics endpoint on Debian's python3-prometheus-client (opened at the start)
echo 'METRICS_LISTEN="127.0.0.1:9469"' >>/etc/portsentinel/portsentinel.conf
systemctl restart portsentinel.service
wait_for started 2
scrape() {
    python3 -c 'import urllib.request as u
print(u.urlopen("http://127.0.0.1:9469/metrics").read().decode())' >/out/metrics
}
wait_for scrape
systemctl stop portsentinel.service
nft list set inet portsentinel ban4 >/out/stop.ban4 2>&1
ls /var/lib/portsentinel >/out/stop.state
apt-get remove -y portsentinel >/out/remove.txt 2>&1
echo "$?" >/out/remove.rc
nft list tables >/out/remove.tables 2>&1
{ ls /etc/portsentinel /var/lib/portsentinel
  getent passwd portsentinel | cut -d: -f1
  ls /lib/systemd/system/portsentinel.service /usr/sbin/portsentinel
  ls /usr/lib/python3/dist-packages/portsentinel
} >/out/remove.left 2>&1
apt-get purge -y portsentinel >/out/purge.txt 2>&1
echo "$?" >/out/purge.rc
{ ls -d /etc/portsentinel /var/lib/portsentinel /var/log/portsentinel
  ls -d /etc/systemd/system/portsentinel.service.d
  getent passwd portsentinel | cut -d: -f1
  dpkg-query -W -f='${db:Status-Status}\n' portsentinel
} >/out/purge.left 2>&1
# Debian's portsentry installed: apt hands over (removes it), its configuration stays
dpkg -i /out/portsentry-standin.deb >/out/standin.txt 2>&1
dpkg -i /out/@DEB@ >/out/conflict.txt 2>&1
echo "$?" >/out/conflict.rc
apt-get install -y /out/@DEB@ >/out/handover.txt 2>&1
dpkg-query -W -f='${db:Status-Status}\n' portsentry >/out/handover.portsentry 2>&1
# what PortSentry's KILL_ROUTE left: its configuration and history stay after the hand-over
mkdir -p /etc/portsentry /var/lib/portsentry
printf '%s\n' 'TCP_PORTS="1"' 'BLOCK_TCP="1"' \
    'HISTORY_FILE="/var/lib/portsentry/portsentry.history"' \
    'BLOCKED_FILE="/var/lib/portsentry/portsentry.blocked"' \
    'KILL_ROUTE="/sbin/route add -host $TARGET$ reject"' >/etc/portsentry/portsentry.conf
echo '1403884279 - 06/27/2014 17:51:10 Host: 198.18.20.5/198.18.20.5 Port: 1 TCP Blocked' \
    >/var/lib/portsentry/portsentry.history
route add -host 198.18.20.5 reject
route add -host 198.18.20.9 reject
portsentinel migrate --output /tmp/migrated.conf >/out/legacy.list 2>&1
ip -4 route show >/out/legacy.before
portsentinel migrate --clean-legacy >/out/legacy.clean 2>&1
echo "$?" >/out/legacy.rc
ip -4 route show >/out/legacy.after
systemctl poweroff
"""


def _unavailable() -> str | None:
    return nspawn.unavailable(("nmap", "nft", "ip", "dpkg-deb", "apt-get"))


@pytest.mark.skipif(_unavailable() is not None, reason=_unavailable() or "")
def test_install_ban_stop_remove_purge_in_a_container(deb: Path, tmp_path: Path) -> None:
    missing = subprocess.run(
        ["dpkg-query", "-W", "python3-prometheus-client", "nftables", "adduser"],
        capture_output=True,
        check=False,
    )
    if missing.returncode != 0:
        pytest.skip("the package's dependencies are not installed on this machine")
    standin = tmp_path / "standin"
    (standin / "DEBIAN").mkdir(parents=True)
    (standin / "DEBIAN" / "control").write_text(STANDIN)
    work = tmp_path / "boot"
    work.mkdir()
    prepare = [
        f"cp {deb} $W/out/",
        f"dpkg-deb --root-owner-group --build {standin} $W/out/portsentry-standin.deb",
        # this machine's own PortSentinel, if any, stays out of the container
        "rm -rf $M/etc/portsentinel $M/var/lib/portsentinel",
        # a build machine's policy-rc.d forbids starting services; a host does not
        "rm -f $M/usr/sbin/policy-rc.d",
        # a pip install of this checkout (CI's) must not shadow the package's files
        "rm -rf $M/usr/local/lib/python3*/dist-packages/*portsentinel*",
    ]
    out = nspawn.boot(work, INNER.replace("@DEB@", DEB), prepare)
    log = (out / "log.txt").read_text()
    install = (out / "install.txt").read_text()
    assert (out / "install.rc").read_text().strip() == "0", install
    assert (out / "active").read_text().strip() == "active", log + install
    assert (out / "enabled").read_text().strip() == "enabled"
    show = (out / "show").read_text()
    assert "FragmentPath=/lib/systemd/system/portsentinel.service" in show
    assert "User=portsentinel" in show
    # the package's files run: its command, Debian's python3, its module
    cmdline = (out / "cmdline").read_text().split()
    assert cmdline[:3] == ["/usr/bin/python3", "/usr/sbin/portsentinel", "run"], cmdline
    module = (out / "module").read_text().strip()
    assert module == "/usr/lib/python3/dist-packages/portsentinel/__init__.py"
    assert (out / "conf").read_text().split() == ["root:portsentinel", "640"]
    assert "portsentinel" in (out / "man").read_text()
    assert "198.18.10.2" in (out / "list").read_text(), log
    metrics = (out / "metrics").read_text()
    assert re.search(r"^portsentinel_bans_active(\{[^}]*\})? [1-9]", metrics, re.M), metrics
    # stop: the table and the ban stay (each ends at its timeout); the state stays
    assert "198.18.10.2" in (out / "stop.ban4").read_text()
    assert "portsentinel.db" in (out / "stop.state").read_text().split()
    # remove: no ban left in the kernel; configuration, state and user stay; the code goes
    assert (out / "remove.rc").read_text().strip() == "0", (out / "remove.txt").read_text()
    assert "portsentinel" not in (out / "remove.tables").read_text()
    left = (out / "remove.left").read_text()
    assert "portsentinel.conf" in left
    assert "portsentinel.db" in left
    assert re.search(r"^portsentinel$", left, re.M)
    assert "ls: cannot access '/lib/systemd/system/portsentinel.service'" in left
    assert "ls: cannot access '/usr/sbin/portsentinel'" in left
    assert "ls: cannot access '/usr/lib/python3/dist-packages/portsentinel'" in left
    # purge: configuration, state, logs and drop-ins go; the user stays
    assert (out / "purge.rc").read_text().strip() == "0", (out / "purge.txt").read_text()
    purged = (out / "purge.left").read_text()
    for gone in ("/etc/portsentinel", "/var/lib/portsentinel", "/var/log/portsentinel"):
        assert f"ls: cannot access '{gone}'" in purged
    assert "ls: cannot access '/etc/systemd/system/portsentinel.service.d'" in purged
    assert re.search(r"^portsentinel$", purged, re.M)
    assert purged.rstrip().endswith("no packages found matching portsentinel")  # forgotten
    # Debian's portsentry: dpkg refuses both at once, apt removes it for portsentinel
    assert (out / "conflict.rc").read_text().strip() == "1"
    assert "conflicts with portsentry" in (out / "conflict.txt").read_text()
    handover = (out / "handover.txt").read_text()
    assert "The following packages will be REMOVED:\n  portsentry\n" in handover, handover
    assert "Setting up portsentinel" in handover
    assert (out / "handover.portsentry").read_text().strip() in ("not-installed", "config-files")
    # PortSentry's leftovers, from the package's own migrate: listed, removed only when asked,
    # and only those of the addresses PortSentry recorded
    listed = (out / "legacy.list").read_text()
    assert "  - route unreachable 198.18.20.5\n" in listed, listed
    assert "198.18.20.9" not in listed
    assert "unreachable 198.18.20.5 " in (out / "legacy.before").read_text()
    assert (out / "legacy.rc").read_text().strip() == "0", (out / "legacy.clean").read_text()
    assert (out / "legacy.clean").read_text() == "removed route unreachable 198.18.20.5\n"
    after = (out / "legacy.after").read_text()
    assert "198.18.20.5" not in after
    assert "unreachable 198.18.20.9 " in after
