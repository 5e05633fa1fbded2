"""What the fleet tests share: a real store with bans in it (a helper, not a test module)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from portsentinel.store.records import BanRecord
from portsentinel.store.sqlite import Store

T0 = 1_700_000_000.0


def ban(store: Store, address: str, *, expires: float | None = T0 + 3600, created: float = T0,
        kinds: tuple[str, ...] = ("SYN",), reason: str = "SYN scan") -> BanRecord:  # fmt: skip
    evidence: dict[str, Any] = {"kinds": list(kinds), "ports": ["tcp/22"], "hits": 3}
    record = store.begin_ban(address, None, created=created, expires=expires, reason=reason,
                             rule=None, evidence=evidence, offence=1)  # fmt: skip
    store.activate(record.id)
    found = store.ban(record.id)
    assert found is not None
    return found


def open_store(tmp_path: Path) -> Store:
    return Store.open(str(tmp_path))
