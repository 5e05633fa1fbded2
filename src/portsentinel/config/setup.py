"""Build the pure core's inputs from loaded settings: shared by ``replay`` and ``run``.

Kept apart from both the config room and the detection core so that neither imports the other.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from portsentinel import paths
from portsentinel.config import LoadedConfig, load_config, load_ignore_file, resolve_modes
from portsentinel.config.load import DEFAULT_ORIGIN
from portsentinel.config.schema import Settings
from portsentinel.detect.settings import DetectorConfig
from portsentinel.errors import ConfigError
from portsentinel.files import absent
from portsentinel.model import Mode
from portsentinel.networks import AddressSet


@dataclass(frozen=True, slots=True)
class Invocation:
    """What the command line itself says beyond the config file: PortSentry 2.0's flags
    (``cli/portsentry2``). Kept with the setup so that a reload reads the config the same way.

    ``portsentry2`` marks a daemon started with 2.0's flags: its modes watch only the
    protocols whose TCP_PORTS/UDP_PORTS the config file sets, as 2.0 does. ``interfaces``
    replaces INTERFACES when not None (``-i``); ``loopback`` adds the loopback interface
    (``-i ALL``); ``service_check`` False is ``-S`` (ports in use are watched too).
    """

    portsentry2: bool = False
    interfaces: tuple[str, ...] | None = None
    loopback: bool = False
    service_check: bool = True


@dataclass(frozen=True)
class Setup:
    """Everything loaded from files before the core starts."""

    config: LoadedConfig
    tcp_mode: Mode | None
    udp_mode: Mode | None
    modes_from: str
    ignore: AddressSet
    warnings: tuple[str, ...]
    invocation: Invocation = dataclasses.field(default_factory=Invocation)

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


def load_setup(
    config_path: str | None, modes: str | None, invocation: Invocation | None = None
) -> Setup:
    """Load the config (or the embedded defaults, see ``choose_config_file``), the ignore file
    and the mode choice. Raises ConfigError/ConfigErrors for bad input.
    """
    invocation = invocation or Invocation()
    loaded = load_config(choose_config_file(config_path))
    if invocation.interfaces is not None:
        settings = dataclasses.replace(loaded.settings, interfaces=invocation.interfaces)
        loaded = dataclasses.replace(loaded, settings=settings)
    if not loaded.settings.log_format:  # set in the configuration, it always wins
        chosen = "2.0" if invocation.portsentry2 else "1.2"
        loaded = dataclasses.replace(
            loaded, settings=dataclasses.replace(loaded.settings, log_format=chosen)
        )
    settings = loaded.settings
    tcp_mode, udp_mode, modes_from = resolve_modes(modes, settings.defaults_file)
    if invocation.portsentry2 and loaded.path is not None:
        tcp_mode, udp_mode = _ports_set(loaded, tcp_mode, udp_mode)
    ignore = AddressSet()
    warnings = list(loaded.warnings)
    if settings.ignore_file and not absent(settings.ignore_file):
        # a missing ignore file is already a warning of load_config; one that is there but
        # cannot be read (a symlink loop, a FIFO ...) is an error of load_ignore_file
        portsentry2 = loaded.settings.log_format == "2.0"
        ignore, ignore_warnings = load_ignore_file(settings.ignore_file, portsentry2=portsentry2)
        warnings.extend(ignore_warnings)
    return Setup(loaded, tcp_mode, udp_mode, modes_from, ignore, tuple(warnings), invocation)


def _ports_set(
    loaded: LoadedConfig, tcp: Mode | None, udp: Mode | None
) -> tuple[Mode | None, Mode | None]:
    """PortSentry 2.0 watches a protocol only when its config file lists that protocol's
    ports, and refuses a file that lists neither."""
    origins = loaded.origins
    tcp = tcp if origins["TCP_PORTS"] != DEFAULT_ORIGIN else None
    udp = udp if origins["UDP_PORTS"] != DEFAULT_ORIGIN else None
    if tcp is None and udp is None:
        raise ConfigError(
            "neither TCP_PORTS nor UDP_PORTS is set: PortSentry 2.0's command line watches "
            "the ports they list",
            file=loaded.path,
            key="TCP_PORTS",
            expected="at least one of TCP_PORTS, UDP_PORTS",
        )
    return tcp, udp


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
        trigger_per_protocol=s.log_format != "2.0",  # 1.2 ran a process per protocol
    )
