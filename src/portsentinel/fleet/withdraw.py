"""``unblock`` and the fleet: lift everywhere, or here only (``--local``).

Everywhere: the fleet's decisions on the address with origin ``portsentinel`` are deleted in
LAPI (``DELETE /v1/decisions?ip=ADDR&origin=portsentinel``: filtered by address and origin,
never unfiltered), at once when LAPI answers, else through the outbox, which the daemon sends
when LAPI is back. Every host drops the address within its poll interval. The local ban is
marked ``withdrawn`` first, so the daemon's link does not queue the same deletion again.

Here only: the local ban's fleet record is marked ``ended`` (its fleet decision runs its time
elsewhere) and this host's copies of the fleet's decisions on the address are dismissed: not
applied here again (a new decision, later, is).
"""

from __future__ import annotations

from portsentinel.config.schema import Settings
from portsentinel.fleet.alerts import ORIGIN
from portsentinel.fleet.credentials import fleet_config
from portsentinel.fleet.lapi import Lapi, LapiError
from portsentinel.store.fleet import OutboxItem
from portsentinel.store.sqlite import Store

CLI_TIMEOUT = 3.0  # seconds the verb waits for LAPI before leaving the deletion to the outbox


def before_lift(store: Store, address: str, now: float, *, local: bool) -> None:
    """Mark the live ban on ``address`` before it is lifted (see the module docstring)."""
    ban = store.ban_for(address)
    if ban is not None:
        store.fleet_note_bans([(ban.id, ban.address, None, "ended" if local else "withdrawn")], now)
    if local:
        store.fleet_dismiss(address)


def everywhere(settings: Settings, store: Store, address: str, now: float) -> str | None:
    """Delete the fleet's decisions on ``address``; a line saying what happened, or None
    when there is no fleet (no URL, or no machine credentials)."""
    config = fleet_config(settings)
    if config is None or config.machine is None:
        return None
    lapi = Lapi(config.url, machine=config.machine, ca_file=config.ca_file,
                timeout=min(CLI_TIMEOUT, settings.crowdsec_timeout))  # fmt: skip
    try:
        deleted = lapi.delete_decisions(ip=address, origin=ORIGIN)
    except LapiError as exc:
        item = OutboxItem(f"unban:{address}:{now:.3f}", "unban", address, None, {}, now, now)
        store.outbox_put([item], settings.crowdsec_outbox_max)
        return (f"fleet: LAPI did not answer ({exc}); the deletion of {address}'s fleet "
                "decisions waits in the outbox for the daemon")  # fmt: skip
    return f"fleet: {deleted} decisions on {address} deleted in LAPI"
