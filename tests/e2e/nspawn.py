"""Booting this machine's own systemd in a throwaway container, for the service's tests.

The container's root is an overlay over ``/`` whose writes go to a tmpfs, inside a private
mount namespace, booted by ``systemd-nspawn`` with a private network (no link to anything),
so nothing reaches this machine's /etc, /var, /run or firewall. The test gives a shell script
that runs as a oneshot unit once the container booted (``pstest.service``) and writes what it
learns to /out (a folder of the test's), and the lines that prepare the tree before the boot
(``$M`` is the tree). ``SCANNER_SETUP`` are shell helpers for such scripts: a polling
``wait_for`` (no fixed sleeps) and a scanner namespace joined to the container by a veth pair.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SYSTEMD = Path("/lib/systemd/systemd")
DEBIAN_PYTHON = "/usr/bin/python3"  # the service runs Debian's python3

SCANNER_SETUP = """
wait_for() {  # poll a condition every 0.1 s for at most 30 s (no fixed sleeps)
    i=0
    while ! "$@" >/dev/null 2>&1; do
        i=$((i + 1)); [ "$i" -gt 300 ] && return 1
        sleep 0.1
    done
}
has_line() { grep -q -- "$1" "$2"; }
set_has() { nft list set inet portsentinel ban4 | grep -q "$1"; }
started() {  # the daemon said "now active and listening" at least $1 times
    n=$(journalctl -u portsentinel.service -o cat | grep -c 'now active and listening')
    [ "$n" -ge "$1" ]
}
setup_scanner() {  # namespace, its address, the container's address on the link
    ip netns add "$1"
    ip link add "v$1" type veth peer name peer
    ip link set peer netns "$1"
    ip addr add "$3/24" dev "v$1"; ip link set "v$1" up
    ip netns exec "$1" ip addr add "$2/24" dev peer
    ip netns exec "$1" ip link set peer up
}
"""

BOOT = r"""#!/bin/bash
# In a private mount namespace: an overlay over / whose writes go to a tmpfs, then boot it.
set -eu
W=$1; M=$W/ovl/merged
mount -t tmpfs tmpfs /run        # nspawn's own state stays out of the host's /run
mount -t tmpfs tmpfs "$W/ovl"
mkdir -p "$W/ovl/upper" "$W/ovl/work" "$M"
mount -t overlay overlay -o "lowerdir=/,upperdir=$W/ovl/upper,workdir=$W/ovl/work" "$M"
"$W/prepare" "$M"
exec timeout 300 "$NSPAWN" -q --register=no --keep-unit --private-network \
    --uuid="$(tr -d - </proc/sys/kernel/random/uuid)" -D "$M" \
    --bind="$W/out:/out" -b systemd.unit=pstest.target
"""


def nspawn() -> str | None:
    return os.environ.get("PORTSENTINEL_NSPAWN") or shutil.which("systemd-nspawn")


def unavailable(tools: tuple[str, ...] = ()) -> str | None:
    """Why a container cannot be booted here (None: it can), ``tools`` needed too."""
    if os.geteuid() != 0:
        return "needs root: mounts an overlay and boots a container"
    if nspawn() is None:
        return "systemd-nspawn is absent (package systemd-container; or PORTSENTINEL_NSPAWN)"
    if not SYSTEMD.exists():
        return f"{SYSTEMD} is absent"
    if not Path(DEBIAN_PYTHON).exists():
        return f"{DEBIAN_PYTHON} (Debian's python3, which the service runs) is absent"
    for tool in ("unshare", *tools):
        if shutil.which(tool) is None:
            return f"{tool} is absent"
    return None


def boot(work: Path, inner: str, prepare: list[str]) -> Path:
    """Boot, run ``inner`` (a shell script; ``SCANNER_SETUP`` in it is replaced by the helpers)
    once booted, and return the /out folder. ``prepare``: shell lines run on the tree ``$M``
    before the boot; the script is at ``$W/inner.sh`` for them to copy."""
    out = work / "out"
    out.mkdir()
    (work / "ovl").mkdir()
    (work / "inner.sh").write_text(inner.replace("SCANNER_SETUP", SCANNER_SETUP))
    (work / "pstest.service").write_text(
        "[Unit]\nAfter=basic.target\n[Service]\nType=oneshot\nExecStart=/usr/local/sbin/pstest.sh\n"
        # however the script ends (a failed command included), the container ends at once
        "ExecStopPost=/bin/systemctl --no-block poweroff\n"
    )
    (work / "pstest.target").write_text(
        "[Unit]\nRequires=basic.target pstest.service\nAfter=basic.target\nAllowIsolate=yes\n"
    )
    lines = [
        "#!/bin/sh",
        "set -eu",
        "M=$1",
        f"W={work}",
        "rm -f $M/etc/systemd/system/*.target.wants/* || true",  # no host services
        "mkdir -p $M/usr/local/sbin",
        "cp $W/inner.sh $M/usr/local/sbin/pstest.sh",
        "cp $W/pstest.service $W/pstest.target $M/etc/systemd/system/",
        *prepare,
    ]
    (work / "prepare").write_text("\n".join(lines) + "\n")
    (work / "boot").write_text(BOOT)
    for name in ("inner.sh", "prepare", "boot"):
        (work / name).chmod(0o755)
    done = subprocess.run(
        ["unshare", "-m", "--propagation", "private", str(work / "boot"), str(work)],
        capture_output=True,
        text=True,
        env={**os.environ, "NSPAWN": str(nspawn())},
        timeout=400,
        check=False,
    )
    if not (out / "booted").exists():
        # unavailable() found everything a boot needs: not booting is a failure.
        pytest.fail(f"systemd did not boot in the container: {done.stderr[-500:]}")
    return out
