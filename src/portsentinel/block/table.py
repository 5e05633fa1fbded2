"""Make sure the kernel tracks connections in this network namespace.

Conntrack is what tells a late DNS or NTP reply (its client socket already closed) from a UDP
probe. The kernel only tracks connections in a namespace where some netfilter rule needs it,
so the daemon keeps one harmless rule that does: a counter on established flows in its own
chain of the table the nftables ban sets live in (``nftables.TABLE_REF``). Without ``nft``,
or with ``--dry-run``, the daemon relies on whatever the host's own firewall already tracks.
"""

from __future__ import annotations

import shutil

from portsentinel.block.nftables import TABLE_REF
from portsentinel.block.runner import CommandRunner, Runner

CHAIN = "conntrack"
TIMEOUT = 5.0  # seconds for the one nft transaction

# One transaction: create what is missing, then replace the chain's rules, so running it twice
# leaves one rule.
_SCRIPT = f"""add table {TABLE_REF}
add chain {TABLE_REF} {CHAIN} {{ type filter hook prerouting priority -150; policy accept; }}
flush chain {TABLE_REF} {CHAIN}
add rule {TABLE_REF} {CHAIN} ct state established,related counter
"""


def ensure_conntrack(runner: CommandRunner | None = None) -> str | None:
    """Install the tracking rule through ``runner`` (a plain ``Runner`` when None); None on
    success, else why it could not be done."""
    nft = shutil.which("nft")
    if nft is None:
        return "the nft command is not installed"
    done = (runner if runner is not None else Runner()).run(
        [nft, "-f", "-"], input=_SCRIPT, timeout=TIMEOUT
    )
    if done.ok:
        return None
    if done.returncode is None:  # it could not start, or timed out (and was killed)
        return f"nft failed: {done.error}"
    return f"nft exited with {done.returncode}: {done.stderr.strip()}"
