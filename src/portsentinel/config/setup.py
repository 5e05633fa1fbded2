"""Build the pure core's inputs from loaded settings: shared by ``replay`` and ``run``.

Kept apart from both the config room and the detection core so that neither imports the other.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from portsentinel.config import LoadedConfig, load_config, load_ignore_file, resolve_modes
from portsentinel.config.schema import Settings
from portsentinel.detect.settings import DetectorConfig
from portsentinel.model import Mode
from portsentinel.networks import AddressSet

DEFAULT_CONFIG_PATH = "/etc/portsentinel/portsentinel.conf"


@dataclass(frozen=True)
class Setup:
    """Everything loaded from files before the core starts."""

    config: LoadedConfig
    tcp_mode: Mode | None
    udp_mode: Mode | None
    modes_from: str
    ignore: AddressSet
    warnings: tuple[str, ...]

    @property
    def settings(self) -> Settings:
        return self.config.settings


def load_setup(config_path: str | None, modes: str | None) -> Setup:
    """Load the config (or embedded defaults), the ignore file and the mode choice.

    Without ``--config`` the default path is used when it exists, else the embedded defaults.
    Raises ConfigError/ConfigErrors for bad input.
    """
    if config_path is None and os.path.exists(DEFAULT_CONFIG_PATH):
        config_path = DEFAULT_CONFIG_PATH
    loaded = load_config(config_path)
    settings = loaded.settings
    tcp_mode, udp_mode, modes_from = resolve_modes(modes, settings.defaults_file)
    ignore = AddressSet()
    warnings = list(loaded.warnings)
    if settings.ignore_file and os.path.exists(settings.ignore_file):
        # a missing ignore file is already a warning of load_config
        ignore, ignore_warnings = load_ignore_file(settings.ignore_file)
        warnings.extend(ignore_warnings)
    return Setup(loaded, tcp_mode, udp_mode, modes_from, ignore, tuple(warnings))


def detector_config(setup: Setup) -> DetectorConfig:
    """The detector's view of the settings."""
    s = setup.settings
    return DetectorConfig(
        tcp_mode=setup.tcp_mode,
        udp_mode=setup.udp_mode,
        tcp_ports=s.tcp_ports,
        udp_ports=s.udp_ports,
        advanced_tcp_limit=s.advanced_ports_tcp,
        advanced_udp_limit=s.advanced_ports_udp,
        advanced_exclude_tcp=s.advanced_exclude_tcp,
        advanced_exclude_udp=s.advanced_exclude_udp,
        scan_trigger=s.scan_trigger,
        scan_window=s.scan_window or 0.0,
        block_tcp=s.block_tcp,
        block_udp=s.block_udp,
        max_sources=s.max_tracked_sources,
        max_ports_per_source=s.max_ports_per_source,
        idle_timeout=s.source_idle_timeout or 0.0,
        max_responded=s.max_active_bans,
        ban_rate=s.ban_rate,
        ban_burst=s.ban_burst,
        ban_strong_ports=s.ban_strong_ports,
        block_min_ports=s.block_min_ports,
    )
