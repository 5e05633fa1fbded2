"""Build the pure core's inputs from loaded settings: shared by ``replay`` and ``run``.

Kept apart from both the config room and the detection core so that neither imports the other.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from portsentinel import paths
from portsentinel.config import LoadedConfig, load_config, load_ignore_file, resolve_modes
from portsentinel.config.schema import Settings
from portsentinel.detect.settings import DetectorConfig
from portsentinel.files import absent
from portsentinel.model import Mode
from portsentinel.networks import AddressSet


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


def choose_config_file(given: str | None) -> str | None:
    """The config file to load: ``--config``, else the installed one (``paths.CONFIG_FILE``)
    when there is anything at that path, else None for the embedded defaults. Every verb that
    reads a config chooses it this way. Anything means a symlink loop or a dangling symlink
    too: loading it then says what is wrong, where the embedded defaults would silently run
    without the admin's ignore list and settings."""
    if given is None and os.path.lexists(paths.CONFIG_FILE):
        return paths.CONFIG_FILE
    return given


def load_setup(config_path: str | None, modes: str | None) -> Setup:
    """Load the config (or the embedded defaults, see ``choose_config_file``), the ignore file
    and the mode choice. Raises ConfigError/ConfigErrors for bad input.
    """
    loaded = load_config(choose_config_file(config_path))
    settings = loaded.settings
    tcp_mode, udp_mode, modes_from = resolve_modes(modes, settings.defaults_file)
    ignore = AddressSet()
    warnings = list(loaded.warnings)
    if settings.ignore_file and not absent(settings.ignore_file):
        # a missing ignore file is already a warning of load_config; one that is there but
        # cannot be read (a symlink loop, a FIFO ...) is an error of load_ignore_file
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
        scan_rule=s.scan_rule.value,
        trw_false_positive=s.trw_false_positive,
        trw_detection=s.trw_detection,
        trw_success_benign=s.trw_success_benign,
        trw_success_scanner=s.trw_success_scanner,
        recently_in_use=s.recently_in_use or 0.0,
    )
