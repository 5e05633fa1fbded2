"""How a setting is declared: the spec rides along with its field, and a host default follows
``paths`` whenever settings are built while the spec keeps the path as shipped."""

from __future__ import annotations

import dataclasses

import pytest

from portsentinel import paths
from portsentinel.config import types as t
from portsentinel.config.declaration import SettingSpec, setting


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Sample:
    scan_trigger: int = setting(
        key="SCAN_TRIGGER", parse=t.int_range(0, 9), default="2", unit="count",
        help="a number", origin="portsentry-1.2", lint=lambda raw: "odd" if raw == "3" else None,
    )  # fmt: skip
    defaults_file: str = setting(
        key="DEFAULTS_FILE", parse=t.path, default=lambda: paths.DEFAULTS_FILE, unit="path",
        help="a host path", origin="portsentinel",
    )  # fmt: skip


def spec(name: str) -> SettingSpec:
    found = {f.name: f.metadata["spec"] for f in dataclasses.fields(Sample)}[name]
    assert isinstance(found, SettingSpec)
    return found


def test_a_plain_default_is_parsed_once_by_its_type() -> None:
    trigger = spec("scan_trigger")
    assert (trigger.key, trigger.attr, trigger.default, trigger.unit) == (
        "SCAN_TRIGGER", "scan_trigger", "2", "count",
    )  # fmt: skip
    assert trigger.host_default is None
    assert (trigger.default_text(), trigger.default_value) == ("2", 2)
    assert Sample().scan_trigger == 2
    assert trigger.render(7) == "7"
    assert trigger.lint is not None
    assert (trigger.lint("3"), trigger.lint("2")) == ("odd", None)


def test_a_host_default_follows_paths_and_keeps_the_shipped_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    defaults = spec("defaults_file")
    shipped = defaults.default  # what paths said when the module was imported
    monkeypatch.setattr(paths, "DEFAULTS_FILE", "/srv/elsewhere/portsentry")
    assert Sample().defaults_file == "/srv/elsewhere/portsentry"
    assert defaults.default_text() == defaults.default_value == "/srv/elsewhere/portsentry"
    assert defaults.default == shipped  # the docs and ``config defaults`` print this one
    monkeypatch.setattr(paths, "DEFAULTS_FILE", "/srv/again")
    assert Sample().defaults_file == "/srv/again"  # read at each build, not copied once


def test_a_bad_default_fails_at_declaration() -> None:
    with pytest.raises(t.InvalidValueError):
        setting(key="X", parse=t.int_range(0, 9), default="ten", unit="count", help="h",
                origin="portsentinel")  # fmt: skip
