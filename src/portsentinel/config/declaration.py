"""How a setting is declared: ``setting(...)`` makes a ``Settings`` field and its ``SettingSpec``.

A spec holds everything about one setting in one place (key, value type, default, unit, help,
where it comes from, an optional lint), so the loader, ``config check``, ``config defaults``
and the docs all derive from it. The declarations themselves are in ``schema``.

A default that is a place on the host (the defaults file, resolv.conf, hosts.deny, the MTA) is
declared as a function of ``paths`` and read from it whenever settings are built, so pointing a
``paths`` constant elsewhere moves that default everywhere; what the docs and ``config
defaults`` print is the path as shipped, taken when the setting is declared.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from portsentinel.config.types import ValueType

T = TypeVar("T")

Origin = Literal["portsentry-1.2", "portsentry-2.0", "portsentinel"]

# A lint looks at a value that parsed fine and may return a warning about it.
Lint = Callable[[str], str | None]

# A default read from ``paths`` at the time settings are built (``lambda: paths.RESOLV_CONF``).
HostDefault = Callable[[], str]


@dataclass(frozen=True, slots=True)
class SettingSpec:
    """The declaration of one setting. ``default`` is config text, parsed by ``parse``: the
    shipped default, which the docs print. ``host_default``, when set, gives the default in
    force, read from ``paths`` at each call (``default_text``)."""

    key: str
    parse: ValueType[Any]
    default: str
    unit: str
    help: str
    origin: Origin
    lint: Lint | None = None
    host_default: HostDefault | None = None

    @property
    def attr(self) -> str:
        """The ``Settings`` attribute: the key in lower case."""
        return self.key.lower()

    def default_text(self) -> str:
        """The default in force now: a host path as ``paths`` names it today, else ``default``."""
        return self.host_default() if self.host_default is not None else self.default

    @property
    def default_value(self) -> object:
        """The typed default in force now (what ``KEY=""`` means for a non-text setting)."""
        return self.parse(self.default_text())

    def render(self, value: Any) -> str:
        """The value as config text that parses back to ``value``."""
        text: str = self.parse.render(value)
        return text


def setting(
    *,
    key: str,
    parse: ValueType[T],
    default: str | HostDefault,
    unit: str,
    help: str,
    origin: Origin,
    lint: Lint | None = None,
) -> T:
    """Declare a ``Settings`` field; its spec rides along in the field's metadata.

    A callable ``default`` is a host default: the field calls it each time a ``Settings`` is
    built, and the spec keeps what it returns now, at declaration, as the shipped default.
    """
    if callable(default):
        host_default = default
        spec = SettingSpec(key, parse, host_default(), unit, help, origin, lint, host_default)
        field: T = dataclasses.field(
            default_factory=lambda: parse(host_default()), metadata={"spec": spec}
        )
        return field
    spec = SettingSpec(key, parse, default, unit, help, origin, lint)
    value: T = dataclasses.field(default=parse(default), metadata={"spec": spec})
    return value
