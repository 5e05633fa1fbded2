"""Which hosts reported an address to the fleet (``why ADDR``): LAPI's alerts on it, each
with the ``machine_id`` LAPI stamped on it (the login of the machine that sent it, which a
sender cannot choose). Asked at the moment ``why`` runs, with the machine's credentials and a
short timeout: LAPI keeps the alerts, this host keeps only the decisions it pulled.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from portsentinel.config.schema import Settings
from portsentinel.errors import ConfigError
from portsentinel.fleet.credentials import fleet_config
from portsentinel.fleet.lapi import Lapi, LapiError

TIMEOUT: Final = 2.0  # seconds ``why`` waits for LAPI
LIMIT: Final = 50  # alerts shown at most, newest first


def summary(found: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One entry per alert: the machine, the scenario, when, and whether it carried a
    decision (a ban) or was a weak report for the sweep rule (pure)."""
    out = []
    for alert in found:
        machine = alert.get("machine_id")
        out.append({
            "machine": str(machine) if machine else "?",
            "scenario": str(alert.get("scenario", "")),
            "at": str(alert.get("created_at", "")),
            "decision": bool(alert.get("decisions")),
            "message": str(alert.get("message", ""))[:300],
        })  # fmt: skip
    return out


def reported_by(settings: Settings, address: str) -> list[dict[str, Any]] | str | None:
    """The alerts on ``address`` (``summary``), a line saying why they cannot be had, or
    None when there is no fleet to ask (no URL, or no machine credentials)."""
    try:
        config = fleet_config(settings)
    except ConfigError as exc:
        return f"the fleet's settings are wrong: {exc}"
    if config is None or config.machine is None:
        return None
    lapi = Lapi(config.url, machine=config.machine, ca_file=config.ca_file,
                timeout=min(TIMEOUT, settings.crowdsec_timeout))  # fmt: skip
    try:
        return summary(lapi.alerts_from(address, limit=LIMIT))
    except LapiError as exc:
        return f"LAPI did not answer: {exc}"
