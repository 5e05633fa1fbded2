"""Fuzz the config room's parsers: text in, a valid result or a located config error out.

Run: ``python fuzz/fuzz_config.py [libFuzzer options] [CORPUS...]`` (needs ``atheris``).

Byte 0 picks the parser (``TARGETS[byte % 5]``), the rest is the file's text:

- ``config``: ``parse_config`` (portsentry.conf syntax). It never raises: errors come back in
  the ``Diagnosis``, each a ``ConfigError`` that names the file and line. A config that
  loads must print (``render_effective``, what ``config check`` shows) as a config that loads
  back to the same settings, and must start the detection core: its ``DetectorConfig`` and a
  ``Detector`` build without error.
- ``ignore``: ``parse_ignore``; only ``ConfigErrors`` of located ``ConfigError``; every network
  it returns matches its own address.
- ``defaults``: ``parse_defaults`` (Debian's /etc/default/portsentry); only ``ConfigErrors``;
  a mode is one of its protocol's.
- ``modes``: ``parse_modes`` (``--mode``); only ``ConfigError``; at least one mode, each of
  the right protocol.
- ``resolv``: ``parse_resolv_conf``; never raises; every address it returns packs to 4 or 16 bytes.

Anything else escaping, or a broken promise, is a finding.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Final

from fuzzing import require, run_libfuzzer

from portsentinel.config.commands import render_effective
from portsentinel.config.ignore import parse_ignore
from portsentinel.config.load import LoadedConfig, parse_config
from portsentinel.config.modes import parse_defaults, parse_modes
from portsentinel.config.setup import Setup, detector_config
from portsentinel.detect.detector import Detector
from portsentinel.detect.settings import DetectorConfig
from portsentinel.errors import ConfigError, ConfigErrors
from portsentinel.host.resolvconf import parse_resolv_conf
from portsentinel.model import Mode, Proto
from portsentinel.networks import AddressSet

TARGETS: Final = ("config", "ignore", "defaults", "modes", "resolv")
SOURCE: Final = "fuzz.conf"
# Building a Detector costs up to ~10 ms (64 KiB port tables); mutated inputs mostly keep the
# same detector settings, so each distinct one is built once.
_BUILT: dict[DetectorConfig, None] = {}
_BUILT_MAX: Final = 256
# (target, "ok" | "error") -> inputs: shows what a run reached (the CI slice checks it).
OUTCOMES: Counter[tuple[str, str]] = Counter()


def _located(errors: Sequence[ConfigError]) -> None:
    require(bool(errors), "an error without errors")
    for error in errors:
        require(type(error) is ConfigError, f"not a ConfigError: {error!r}")
        require(error.render().startswith(f"{SOURCE}:"), f"not located: {error.render()!r}")


def _starts_the_core(loaded: LoadedConfig) -> None:
    setup = Setup(loaded, Mode.ATCP, Mode.AUDP, "fuzz", AddressSet(), ())
    config = detector_config(setup)  # DetectorConfig validates itself
    if config in _BUILT:
        return
    Detector(config)
    if len(_BUILT) >= _BUILT_MAX:
        _BUILT.clear()
    _BUILT[config] = None


def check_config(text: bytes) -> bool:
    found = parse_config(text, SOURCE)
    if found.config is None:
        _located(found.errors)
        return False
    require(not found.errors, "a config and errors")
    loaded = found.config
    printed = render_effective(loaded.settings, loaded.origins)
    again = parse_config(printed, "again.conf")
    require(again.config is not None, f"config check's output does not load: {again.errors}")
    assert again.config is not None  # for the type checker
    require(again.config.settings == loaded.settings, "config check's output loads differently")
    _starts_the_core(loaded)
    return True


def check_ignore(text: bytes) -> bool:
    try:
        addresses, warnings = parse_ignore(text.decode("utf-8", "replace"), SOURCE)
    except ConfigErrors as exc:
        _located(exc.errors)
        return False
    require(len(addresses) <= text.count(b"\n") + 1, "more networks than lines")
    require(all(w.startswith(f"{SOURCE}:") for w in warnings), "warning not located")
    for network in addresses.networks:
        require(network.network_address.packed in addresses, f"{network} misses itself")
    return True


def check_defaults(text: bytes) -> bool:
    try:
        tcp, udp, warnings = parse_defaults(text.decode("utf-8", "replace"), SOURCE)
    except ConfigErrors as exc:
        _located(exc.errors)
        return False
    require(tcp is None or tcp.proto is Proto.TCP, f"TCP_MODE {tcp}")
    require(udp is None or udp.proto is Proto.UDP, f"UDP_MODE {udp}")
    require(all(w.startswith(f"{SOURCE}:") for w in warnings), "warning not located")
    return True


def check_modes(text: bytes) -> bool:
    try:
        tcp, udp = parse_modes(text.decode("utf-8", "replace"), SOURCE)
    except ConfigError as exc:
        require(type(exc) is ConfigError and exc.file == SOURCE, f"not located: {exc!r}")
        return False
    require(tcp is not None or udp is not None, "no mode and no error")
    require(tcp is None or tcp.proto is Proto.TCP, f"TCP mode {tcp}")
    require(udp is None or udp.proto is Proto.UDP, f"UDP mode {udp}")
    return True


def check_resolv(text: bytes) -> bool:
    found = parse_resolv_conf(text.decode("utf-8", "replace"), SOURCE)
    require(len(found.packed) <= len(found.addresses), "more packed than parsed addresses")
    require(all(len(p) in (4, 16) for p in found.packed), "resolver address length")
    return not found.warnings


# Each returns True for a clean result, False for a (well-formed) error.
CHECKS: Final[tuple[Callable[[bytes], bool], ...]] = (
    check_config,
    check_ignore,
    check_defaults,
    check_modes,
    check_resolv,
)


def test_one_input(data: bytes) -> None:
    """The libFuzzer entry point."""
    if not data:
        return
    index = data[0] % len(CHECKS)
    outcome = "ok" if CHECKS[index](data[1:]) else "error"
    OUTCOMES[TARGETS[index], outcome] += 1


def main(argv: Sequence[str]) -> None:
    run_libfuzzer(test_one_input, argv)


if __name__ == "__main__":
    main(sys.argv)
