"""Make sure the kernel tracks connections in this network namespace.

Conntrack is what tells a late DNS or NTP reply (its client socket already closed) from a UDP
probe. The kernel only tracks connections in a namespace where some netfilter rule needs it,
so the daemon keeps one harmless rule that does: a counter on established flows in its own
table, ``inet portsentinel`` (the table the nftables ban sets live in too). Without ``nft``,
or with ``--dry-run``, the daemon relies on whatever the host's own firewall already tracks.
"""

from __future__ import annotations

import shutil
import subprocess

TABLE = "portsentinel"
CHAIN = "conntrack"

# One transaction: create what is missing, then replace the chain's rules, so running it twice
# leaves one rule.
_SCRIPT = f"""add table inet {TABLE}
add chain inet {TABLE} {CHAIN} {{ type filter hook prerouting priority -150; policy accept; }}
flush chain inet {TABLE} {CHAIN}
add rule inet {TABLE} {CHAIN} ct state established,related counter
"""


def ensure_conntrack(timeout: float = 5.0) -> str | None:
    """Install the tracking rule; None on success, else why it could not be done."""
    nft = shutil.which("nft")
    if nft is None:
        return "the nft command is not installed"
    try:
        done = subprocess.run(
            [nft, "-f", "-"],
            input=_SCRIPT,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"nft failed: {exc}"
    if done.returncode != 0:
        return f"nft exited with {done.returncode}: {done.stderr.strip()}"
    return None
