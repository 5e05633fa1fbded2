"""Build the Debian package: ``scripts/build-deb OUTDIR`` writes
``OUTDIR/portsentinel_VERSION_all.deb`` from this checkout, with dpkg-deb alone (no debhelper).

What it holds, for Debian's own python3 (no virtual environment, no pip):

- the package in /usr/lib/python3/dist-packages/portsentinel (byte-compiled by py3compile at
  configure, cleaned by py3clean before removal), the command /usr/sbin/portsentinel;
- the unit /lib/systemd/system/portsentinel.service (ExecStart=/usr/sbin/portsentinel run);
- the man pages portsentinel(8) and portsentinel.conf(5), compressed;
- the fleet's set-up script for the LAPI host, /usr/share/doc/portsentinel/examples/
  portsentinel-fleet-enroll (copy it there: that host needs no PortSentinel), and fail2ban's
  filters for both log formats and a jail, examples/fail2ban/ (README: fail2ban);
- conffiles: the default configuration /etc/portsentinel/portsentinel.conf (0640; the
  postinst gives it to the group portsentinel) and /etc/logrotate.d/portsentinel;
- Depends: python3 (>= 3.11), python3-prometheus-client, nftables, adduser.
  Conflicts: portsentry (both would watch the same ports; removing portsentry keeps its
  configuration, which ``portsentinel migrate`` reads, and ``apt install portsentry`` is the
  way back);
- maintainer scripts: configure creates the system user portsentinel, runs ``portsentinel
  install`` (drop-ins the configuration needs, and the grants), enables and starts the service.
  What stop, remove and purge do is in ``MAINTAINER_NOTES`` below and in the README.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from portsentinel import __version__  # noqa: E402
from portsentinel.config.commands import render_defaults  # noqa: E402
from portsentinel.system import service_files  # noqa: E402

NAME = "portsentinel"
MAINTAINER = "PortSentinel developers <portsentinel@example.org>"
DEPENDS = "python3 (>= 3.11), python3-prometheus-client, nftables, adduser"
# Debian's layout (fixed here, not settings: the tests redirect ``portsentinel.paths``).
ENROLL = "portsentinel-fleet-enroll"  # the fleet's set-up on the LAPI host (README)
PROGRAM = "/usr/sbin/portsentinel"  # paths.PACKAGED_PROGRAM on the installed system
UNIT = "/lib/systemd/system/portsentinel.service"  # paths.PACKAGED_UNIT
CONFIG = "/etc/portsentinel/portsentinel.conf"
LOGROTATE = "/etc/logrotate.d/portsentinel"
CONFFILES = (CONFIG, LOGROTATE)
SITE = "/usr/lib/python3/dist-packages"

CONTROL = """\
Package: portsentinel
Version: {version}
Architecture: all
Maintainer: {maintainer}
Installed-Size: {size}
Depends: {depends}
Conflicts: portsentry
Section: net
Priority: optional
Description: port-scan detector and active response (a modern PortSentry)
 PortSentinel watches every TCP and UDP port of a Linux host, IPv4 and IPv6,
 notices port scans, logs them in PortSentry's words and blocks the scanner
 with nftables, with bans that expire, without banning the host's own users
 and administrators (a never-block set and a ban budget).
 .
 An existing portsentry.conf is a valid configuration ("portsentinel
 migrate" carries it over), the six modes keep their meaning and the history
 file keeps its format, so fail2ban's portsentry jail still works. The
 service runs as its own system user with only the network capabilities it
 needs.
"""

COMMAND = """\
#!/usr/bin/python3
\"\"\"PortSentinel's command (Debian package).\"\"\"

import sys

from portsentinel.cli.main import main

sys.exit(main())
"""

# What stop, remove and purge do (the README says the same):
# - stop: the daemon ends; its nftables table and the bans in it stay (each ban ends at its
#   own timeout), so nothing banned comes back in while the service is down; a start
#   re-applies the stored bans with the time they have left.
# - remove: the service is stopped and disabled, the table `inet portsentinel` deleted (no
#   ban is left in the kernel); the configuration, the state (bans, events, the store), the
#   logs and the user stay; a reinstall applies the stored bans again. hosts.deny lines and
#   what KILL_RUN_CMD did stay (`portsentinel unblock ADDR` first undoes them).
# - purge: also the configuration (/etc/portsentinel), the state (/var/lib/portsentinel), the
#   logs (/var/log/portsentinel) and install's drop-ins go. The user portsentinel stays
#   (Debian does not reuse a uid that may still own files).
POSTINST = """\
#!/bin/sh
set -e

if [ "$1" = "configure" ]; then
    if ! getent passwd portsentinel >/dev/null; then
        adduser --system --group --quiet --no-create-home --home /var/lib/portsentinel \\
            --gecos "PortSentinel port-scan detector" portsentinel
    fi
    if command -v py3compile >/dev/null 2>&1; then
        py3compile -p portsentinel
    fi
    # The configuration readable by the service's group; the drop-ins it needs
    # (hosts.deny, PortSentry's history directory, COMMANDS_AS_ROOT) with their grants.
    portsentinel install >/dev/null
fi

if [ "$1" = "configure" ] || [ "$1" = "abort-upgrade" ] || [ "$1" = "abort-deconfigure" ] ||
   [ "$1" = "abort-remove" ]; then
    deb-systemd-helper unmask portsentinel.service >/dev/null || true
    # was-enabled is true for a new installation: the service is enabled then.
    if deb-systemd-helper --quiet was-enabled portsentinel.service; then
        deb-systemd-helper enable portsentinel.service >/dev/null || true
    else
        deb-systemd-helper update-state portsentinel.service >/dev/null || true
    fi
    if [ -d /run/systemd/system ]; then
        systemctl --system daemon-reload >/dev/null || true
        deb-systemd-invoke restart portsentinel.service >/dev/null || true
    fi
fi
"""

PRERM = """\
#!/bin/sh
set -e

if [ "$1" = "remove" ] && [ -d /run/systemd/system ]; then
    deb-systemd-invoke stop portsentinel.service >/dev/null || true
fi
if command -v py3clean >/dev/null 2>&1; then
    py3clean -p portsentinel
fi
"""

POSTRM = """\
#!/bin/sh
set -e

case "$1" in
remove)
    # The bans leave the kernel with the package; the store keeps them for a reinstall.
    if command -v nft >/dev/null 2>&1; then
        nft delete table inet portsentinel 2>/dev/null || true
        nft delete table netdev portsentinel 2>/dev/null || true
    fi
    if command -v deb-systemd-helper >/dev/null 2>&1; then
        deb-systemd-helper mask portsentinel.service >/dev/null || true
    fi
    ;;
purge)
    if command -v deb-systemd-helper >/dev/null 2>&1; then
        deb-systemd-helper purge portsentinel.service >/dev/null || true
        deb-systemd-helper unmask portsentinel.service >/dev/null || true
    fi
    rm -f /etc/systemd/system/portsentinel.service.d/files.conf \\
        /etc/systemd/system/portsentinel.service.d/root.conf
    rmdir --ignore-fail-on-non-empty /etc/systemd/system/portsentinel.service.d 2>/dev/null || true
    rm -rf /etc/portsentinel /var/lib/portsentinel /var/log/portsentinel
    ;;
esac

if [ -d /run/systemd/system ]; then
    systemctl --system daemon-reload >/dev/null || true
fi
"""

COPYRIGHT = """\
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: portsentinel

Files: *
Copyright: {year} PortSentinel developers
License: BSD-2-Clause

License: BSD-2-Clause
 Redistribution and use in source and binary forms, with or without
 modification, are permitted provided that the following conditions are met:
 .
 1. Redistributions of source code must retain the above copyright notice,
    this list of conditions and the following disclaimer.
 2. Redistributions in binary form must reproduce the above copyright notice,
    this list of conditions and the following disclaimer in the documentation
    and/or other materials provided with the distribution.
 .
 THIS SOFTWARE IS PROVIDED BY THE COPYRIGHT HOLDERS AND CONTRIBUTORS "AS IS"
 AND ANY EXPRESS OR IMPLIED WARRANTIES, INCLUDING, BUT NOT LIMITED TO, THE
 IMPLIED WARRANTIES OF MERCHANTABILITY AND FITNESS FOR A PARTICULAR PURPOSE
 ARE DISCLAIMED. IN NO EVENT SHALL THE COPYRIGHT HOLDER OR CONTRIBUTORS BE
 LIABLE FOR ANY DIRECT, INDIRECT, INCIDENTAL, SPECIAL, EXEMPLARY, OR
 CONSEQUENTIAL DAMAGES (INCLUDING, BUT NOT LIMITED TO, PROCUREMENT OF
 SUBSTITUTE GOODS OR SERVICES; LOSS OF USE, DATA, OR PROFITS; OR BUSINESS
 INTERRUPTION) HOWEVER CAUSED AND ON ANY THEORY OF LIABILITY, WHETHER IN
 CONTRACT, STRICT LIABILITY, OR TORT (INCLUDING NEGLIGENCE OR OTHERWISE)
 ARISING IN ANY WAY OUT OF THE USE OF THIS SOFTWARE, EVEN IF ADVISED OF THE
 POSSIBILITY OF SUCH DAMAGE.
"""

# Each tag lintian reports, explained (lintian reads this file and reports "overridden").
LINTIAN_OVERRIDES = """\
# The configuration may hold secrets (webhook URLs with tokens, mail addresses): root and the
# service's group (postinst: root:portsentinel) read it, nobody else.
portsentinel: non-standard-file-perm 0640 != 0644 [etc/portsentinel/portsentinel.conf]
# systemd only: the service relies on Type=notify (readiness, the loop's watchdog), ambient
# capabilities for an unprivileged user and systemd's sandbox, which sysvinit cannot give.
portsentinel: package-supports-alternative-init-but-no-init.d-script \
 [lib/systemd/system/portsentinel.service]
"""

CHANGELOG = """\
portsentinel ({version}) unstable; urgency=medium

  * Built from the PortSentinel repository by scripts/build-deb.

 -- {maintainer}  {date}
"""


def build_time() -> float:
    """SOURCE_DATE_EPOCH when set (reproducible builds), else the last commit's time."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if epoch:
        return float(epoch)
    done = subprocess.run(
        ["git", "-C", str(REPO), "log", "-1", "--format=%ct"],
        capture_output=True,
        text=True,
        check=False,
    )
    return float(done.stdout.strip()) if done.returncode == 0 and done.stdout.strip() else 0.0


def gzipped(text: str, stamp: float) -> bytes:
    """``gzip -9n``: no name, a fixed time."""
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", compresslevel=9, mtime=int(stamp)) as out:
        out.write(text.encode("utf-8"))
    return buffer.getvalue()


def put(root: Path, target: str, data: str | bytes, mode: int = 0o644) -> None:
    path = root / target.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    path.chmod(mode)


def stage(root: Path, stamp: float) -> None:
    """Every file of the package below ``root``, and DEBIAN/."""
    package = REPO / "src" / NAME
    for source in sorted(package.rglob("*")):
        relative = source.relative_to(package)
        if source.is_dir() or "__pycache__" in relative.parts or source.suffix == ".pyc":
            continue
        put(root, f"{SITE}/{NAME}/{relative}", source.read_bytes())
    put(root, PROGRAM, COMMAND, 0o755)
    put(root, UNIT, service_files.unit_text(PROGRAM))
    for page in ("portsentinel.8", "portsentinel.conf.5"):
        text = (package / "system" / "man" / page).read_text(encoding="utf-8")
        put(root, f"/usr/share/man/man{page[-1]}/{page}.gz", gzipped(text, stamp))
    put(root, CONFIG, render_defaults(), 0o640)
    put(root, LOGROTATE, service_files.LOGROTATE)
    enroll = (REPO / "packaging" / ENROLL).read_bytes()  # run on the LAPI host, not here
    put(root, f"/usr/share/doc/{NAME}/examples/{ENROLL}", enroll, 0o755)
    fail2ban = REPO / "packaging" / "fail2ban"  # filters for each LOG_FORMAT and a jail
    for source in sorted(fail2ban.rglob("*.conf")):
        relative = source.relative_to(fail2ban)
        put(root, f"/usr/share/doc/{NAME}/examples/fail2ban/{relative}", source.read_bytes())
    put(root, f"/usr/share/lintian/overrides/{NAME}", LINTIAN_OVERRIDES)
    year = time.gmtime(stamp).tm_year
    put(root, f"/usr/share/doc/{NAME}/copyright", COPYRIGHT.format(year=year))
    date = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime(stamp))
    changelog = CHANGELOG.format(version=__version__, maintainer=MAINTAINER, date=date)
    put(root, f"/usr/share/doc/{NAME}/changelog.gz", gzipped(changelog, stamp))
    for path in root.rglob("*"):
        if path.is_dir():
            path.chmod(0o755)
    control = root / "DEBIAN"
    put(root, "/DEBIAN/conffiles", "".join(f"{name}\n" for name in CONFFILES))
    put(root, "/DEBIAN/md5sums", md5sums(root))
    for name, text in (("postinst", POSTINST), ("prerm", PRERM), ("postrm", POSTRM)):
        put(root, f"/DEBIAN/{name}", text, 0o755)
    files = [p for p in root.rglob("*") if p.is_file() and control not in p.parents]
    size = sum(p.stat().st_size for p in files)
    put(
        root,
        "/DEBIAN/control",
        CONTROL.format(
            version=__version__, maintainer=MAINTAINER, size=(size + 1023) // 1024, depends=DEPENDS
        ),
    )
    control.chmod(0o755)


def md5sums(root: Path) -> str:
    lines = []
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if path.is_file() and relative.parts[0] != "DEBIAN" and f"/{relative}" not in CONFFILES:
            lines.append(f"{hashlib.md5(path.read_bytes()).hexdigest()}  {relative}\n")
    return "".join(lines)


def build(outdir: Path) -> Path:
    """Stage and pack; returns the .deb."""
    outdir.mkdir(parents=True, exist_ok=True)
    deb = outdir / f"{NAME}_{__version__}_all.deb"
    stamp = build_time()
    with tempfile.TemporaryDirectory(prefix="build-deb.") as work:
        root = Path(work) / NAME
        stage(root, stamp)
        for path in root.rglob("*"):
            os.utime(path, (stamp, stamp), follow_symlinks=False)
        env = {**os.environ, "SOURCE_DATE_EPOCH": str(int(stamp))}
        subprocess.run(
            ["dpkg-deb", "--root-owner-group", "-Zxz", "--build", str(root), str(deb)],
            check=True,
            env=env,
            stdout=subprocess.DEVNULL,
        )
    return deb


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="build-deb", description=__doc__.splitlines()[0])
    parser.add_argument("outdir", type=Path, help="where portsentinel_VERSION_all.deb goes")
    args = parser.parse_args(argv)
    if shutil.which("dpkg-deb") is None:
        parser.error("dpkg-deb is absent (Debian's dpkg)")
    print(build(args.outdir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
