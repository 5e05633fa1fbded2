"""Read an ignore file (PortSentry's IGNORE_FILE) into an ``AddressSet``.

Where PortSentry is wrong in a dangerous way we do what the admin meant: a CIDR entry with
host bits set matches its whole network (2.0 never matched it), IPv6 works (1.2 had none),
dotted netmasks work (1.2 dropped the entry), and ``/0`` really means every address (1.2 read
it as /32) with a warning, since it switches every response off. An entry that is not an
address at all stops the start: a silently dropped line could get an admin blocked.

PortSentry 2.0's own rules (``portsentry2``, for a 2.0 installation: LOG_FORMAT 2.0) are read
more kindly than 2.0 reads them, each with a warning that says what 2.0 would have done: a
line with a character outside ``[0-9a-f.:/]`` (a space, a tab, a trailing comment, upper-case
hex, a CR) is fatal in 2.0 and read here as above; an entry with host bits set
(``192.168.1.5/24``) never matches in 2.0 and matches its whole network here.
"""

from __future__ import annotations

import ipaddress
import re

from portsentinel.errors import ConfigError, ConfigErrors
from portsentinel.files import MIB, read_regular
from portsentinel.networks import AddressSet, Network

KEY = "IGNORE_FILE"
EXPECTED = "an IPv4/IPv6 address or CIDR range"
_PREFIX = re.compile(r"[0-9]{1,3}")
_V4_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
_STRICT_2_0 = re.compile(r"[0-9a-f.:/]*")  # every character 2.0 accepts on a line
# About half a million entries: more than any hand-kept list, less than a memory exhaustion.
MAX_IGNORE_BYTES = 16 * MIB


def load_ignore_file(path: str, *, portsentry2: bool = False) -> tuple[AddressSet, tuple[str, ...]]:
    """The networks in ``path`` and warnings. Raises ``ConfigErrors`` for bad entries.

    A missing file is only a warning (nothing is ignored); one that exists but cannot be read
    (no permission, a symlink loop, a FIFO, larger than ``MAX_IGNORE_BYTES``) is an error,
    because the admin clearly meant something to be in it.
    """
    try:
        data = read_regular(path, MAX_IGNORE_BYTES, "an ignore file")
    except FileNotFoundError:
        return AddressSet(), (f"{path}: {KEY}: file does not exist; nothing is ignored",)
    except OSError as exc:
        error = ConfigError(
            f"cannot read the file: {exc.strerror or exc}",
            file=path,
            key=KEY,
            expected="a readable file",
        )
        raise ConfigErrors([error]) from None
    return parse_ignore(data.decode("utf-8", "replace"), path, portsentry2=portsentry2)


def parse_ignore(
    text: str, source: str, *, portsentry2: bool = False
) -> tuple[AddressSet, tuple[str, ...]]:
    """Parse ignore-file text named ``source``. Pure. Raises ``ConfigErrors``. With
    ``portsentry2``, what PortSentry 2.0 would refuse or never match is a warning."""
    networks: list[Network] = []
    warnings: list[str] = []
    errors: list[ConfigError] = []
    for number, line in enumerate(text.split("\n"), start=1):
        entry = _entry(line)
        if entry is None:
            continue
        try:
            network = parse_entry(entry)
        except ValueError as exc:
            errors.append(
                ConfigError(str(exc), file=source, line=number, key=KEY, expected=EXPECTED)
            )
            continue
        notes = _notes_2_0(line, entry, network) if portsentry2 else []
        if network.prefixlen == 0:
            notes.append(f"{entry} matches every IPv{network.version} address: all responses off")
        warnings += [ConfigError(n, file=source, line=number, key=KEY).render() for n in notes]
        networks.append(network)
    if errors:
        raise ConfigErrors(errors)
    return AddressSet(networks), tuple(warnings)


def _notes_2_0(line: str, entry: str, network: Network) -> list[str]:
    """What PortSentry 2.0 would have made of a line PortSentinel reads."""
    notes = []
    if not line.startswith("#") and not _STRICT_2_0.fullmatch(line.rstrip("\n")):
        notes.append(
            "PortSentry 2.0 refuses this line (only 0-9, a-f, '.', ':' and '/' are allowed: "
            f"no space, comment or upper case) and would not start; read as {network}"
        )
    address = entry.partition("/")[0]
    try:
        host_bits = ipaddress.ip_address(address) != network.network_address
    except ValueError:
        host_bits = False  # an IPv4-mapped entry, turned into its IPv4 network
    if host_bits and "/" in entry:
        notes.append(
            f"{entry} has host bits set: it matches {network} here, and never matched in "
            "PortSentry 2.0 (write the network address)"
        )
    return notes


def _entry(line: str) -> str | None:
    """The first word of a line, minus a ``#`` comment; the rest of the line is ignored,
    as PortSentry 1.2 ignores it (people write notes after the address)."""
    words = line.split("#", 1)[0].split()
    return words[0] if words else None


def parse_entry(entry: str) -> Network:
    """``addr``, ``addr/bits`` or ``a.b.c.d/m.m.m.m``; host bits are masked off.

    An IPv4-mapped IPv6 entry becomes the IPv4 network, which matches both plain IPv4
    packets and mapped ones. Raises ``ValueError`` with a short reason.
    """
    address_text, slash, mask_text = entry.partition("/")
    try:
        address = ipaddress.ip_address(address_text)
    except ValueError:
        raise ValueError(f"{entry!r} is not an address") from None
    if not slash:
        prefix: int = address.max_prefixlen
    elif _PREFIX.fullmatch(mask_text) and int(mask_text) <= address.max_prefixlen:
        prefix = int(mask_text)
    elif address.version == 4 and "." in mask_text:
        prefix = _netmask_bits(entry, mask_text)
    else:
        raise ValueError(f"{entry!r} has a bad prefix length")
    network = ipaddress.ip_network((address, prefix), strict=False)
    if isinstance(network, ipaddress.IPv6Network) and network.subnet_of(_V4_MAPPED):
        mapped = network.network_address.ipv4_mapped
        if mapped is not None:
            return ipaddress.IPv4Network((mapped, network.prefixlen - 96))
    return network


def _netmask_bits(entry: str, mask_text: str) -> int:
    """Prefix length of a dotted netmask; only contiguous masks (255.255.0.0), never the
    inverted "host mask" form that ``ipaddress`` would also accept."""
    try:
        mask = int(ipaddress.IPv4Address(mask_text))
    except ValueError:
        raise ValueError(f"{entry!r} has a bad netmask") from None
    inverted = ~mask & 0xFFFFFFFF
    if inverted & (inverted + 1):
        raise ValueError(f"{entry!r} has a netmask that is not contiguous")
    return 32 - inverted.bit_length()
