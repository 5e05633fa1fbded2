"""block/dryrun.py: a dry run's would-be ban is recorded with a detail that names it and says
nothing was applied; lifting and checking it touch nothing."""

from __future__ import annotations

from portsentinel.block.base import BanSpec, detail_ban
from portsentinel.block.dryrun import NAME, DryRunBackend


def test_a_would_be_ban_is_a_detail_and_nothing_else() -> None:
    backend = DryRunBackend()
    backend.start()
    detail = backend.block(BanSpec.create("198.18.0.2", port=80))
    assert detail["backend"] == NAME
    assert detail["applied"] is False
    assert detail_ban(detail, NAME) == BanSpec.create("198.18.0.2", port=80)
    backend.unblock(detail)  # nothing to undo
    [again] = backend.block_many([BanSpec.create("fd00:5e::2")])
    assert not isinstance(again, Exception)
    assert again["key"] == "fd00:5e::2"
    checked = backend.check()
    assert checked.intact
    assert dict(checked.present) == {}
