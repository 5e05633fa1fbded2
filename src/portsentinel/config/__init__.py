"""Configuration: PortSentry's ``KEY="value"`` files, typed once into ``Settings``.

``schema`` declares every setting (``declaration`` is how, ``types`` and ``endpoints`` the value
types); ``load`` reads a config file; ``ignore`` reads ignore files; ``modes`` picks the modes
to run; ``setup`` loads all three for ``run`` and ``replay``; ``commands`` backs ``config
check`` and ``config defaults``; ``legacy`` reads files as PortSentry 1.2 did, for ``migrate``.
"""

from __future__ import annotations

from portsentinel.config.declaration import SettingSpec
from portsentinel.config.ignore import load_ignore_file
from portsentinel.config.load import Diagnosis, LoadedConfig, diagnose_config, load_config
from portsentinel.config.modes import parse_modes, read_defaults_file, resolve_modes
from portsentinel.config.schema import SETTINGS, Settings, spec_for
from portsentinel.config.types import Backend, BlockLevel

__all__ = [
    "SETTINGS",
    "Backend",
    "BlockLevel",
    "Diagnosis",
    "LoadedConfig",
    "SettingSpec",
    "Settings",
    "diagnose_config",
    "load_config",
    "load_ignore_file",
    "parse_modes",
    "read_defaults_file",
    "resolve_modes",
    "spec_for",
]
