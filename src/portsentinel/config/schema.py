"""Every setting, declared once: key, type, default, unit, help text and where it comes from.

The loader, ``config check``, ``config defaults`` and the docs all walk ``SETTINGS``; adding a
setting means adding one ``setting(...)`` line to ``Settings`` and nothing else (``declaration``
says what a declaration holds). Defaults are written as config text and parsed by the setting's
own type, so the defaults dump is, by construction, a file that loads back to exactly
``Settings()`` (with the host paths as shipped).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from portsentinel import paths
from portsentinel.config import endpoints as o
from portsentinel.config import types as t
from portsentinel.config.declaration import Origin, SettingSpec, setting
from portsentinel.config.endpoints import NotifyOn, ScanRule
from portsentinel.config.portsentry12 import PortSentry12Settings
from portsentinel.config.types import Backend

_NEW: Origin = "portsentinel"


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings(PortSentry12Settings):
    """The typed, immutable configuration. Attribute names are the lower-case keys; PortSentry
    1.2's own come first (``portsentry12.py``)."""

    # --- PortSentinel -------------------------------------------------------------------
    block_backend: Backend = setting(  # noqa: RUF009 - a dataclasses.field
        key="BLOCK_BACKEND", parse=t.backend, default="nftables", unit="backend",
        help="how blocks are applied: nftables, iptables, route, or legacy (KILL_ROUTE)",
        origin=_NEW,
    )  # fmt: skip
    ban_duration: float | None = setting(
        key="BAN_DURATION", parse=t.ban_duration, default="1h", unit="seconds",
        help="length of a first ban, or permanent as in PortSentry", origin=_NEW,
    )  # fmt: skip
    ban_repeat_factor: float = setting(
        key="BAN_REPEAT_FACTOR", parse=t.number_range(1.0, 1000.0), default="2", unit="factor",
        help="each repeat ban of a source lasts this many times the previous one",
        origin=_NEW,
    )  # fmt: skip
    ban_max_duration: float | None = setting(
        key="BAN_MAX_DURATION", parse=t.ban_duration, default="7d", unit="seconds",
        help="upper bound for a repeat offender's ban, or permanent", origin=_NEW,
    )  # fmt: skip
    decoy_ban_duration: float = setting(
        key="DECOY_BAN_DURATION", parse=t.positive_duration, default="5m", unit="seconds",
        help="the longest ban of a source in a decoy group (several sources probing the same "
        "ports at the same moments, as nmap -D sends) that did not prove its address with a "
        "completed handshake; a ban made before the group showed is cut to it",
        origin=_NEW,
    )  # fmt: skip
    unblock_run_cmd: str = setting(
        key="UNBLOCK_RUN_CMD", parse=t.command, default="", unit="command",
        help="command run when a ban ends, undoing KILL_RUN_CMD", origin=_NEW,
    )  # fmt: skip
    scan_window: float = setting(
        key="SCAN_WINDOW", parse=t.duration, default="0", unit="seconds",
        help="hits older than this stop counting toward SCAN_TRIGGER; 0 never forgets",
        origin=_NEW,
    )  # fmt: skip
    scan_rule: ScanRule = setting(  # noqa: RUF009 - a dataclasses.field
        key="SCAN_RULE", parse=o.scan_rule, default="trigger", unit="rule",
        help="how a source becomes a scanner: trigger counts its hits against SCAN_TRIGGER "
        "(PortSentry); trw is a sequential test of its first contacts (Threshold Random "
        "Walk): a probe to a port no socket uses counts against it, a connection to a port "
        "in use for it, with no time window",
        origin=_NEW,
    )  # fmt: skip
    trw_false_positive: float = setting(
        key="TRW_FALSE_POSITIVE", parse=t.number_range(0.0001, 0.49), default="0.01",
        unit="probability", help="SCAN_RULE=trw: the share of benign sources it may take "
        "for scanners (alpha)", origin=_NEW,
    )  # fmt: skip
    trw_detection: float = setting(
        key="TRW_DETECTION", parse=t.number_range(0.51, 0.9999), default="0.99",
        unit="probability", help="SCAN_RULE=trw: the share of scanners it must catch (beta); "
        "a source is a scanner once its likelihood ratio reaches beta/alpha", origin=_NEW,
    )  # fmt: skip
    trw_success_benign: float = setting(
        key="TRW_SUCCESS_BENIGN", parse=t.number_range(0.51, 0.99), default="0.8",
        unit="probability", help="SCAN_RULE=trw: how often a benign source's first contact "
        "reaches a port in use (theta0)", origin=_NEW,
    )  # fmt: skip
    trw_success_scanner: float = setting(
        key="TRW_SUCCESS_SCANNER", parse=t.number_range(0.01, 0.49), default="0.2",
        unit="probability", help="SCAN_RULE=trw: how often a scanner's first contact reaches "
        "a port in use (theta1); with the defaults four straight failures make a scanner",
        origin=_NEW,
    )  # fmt: skip
    recently_in_use: float = setting(
        key="RECENTLY_IN_USE", parse=t.duration, default="10m", unit="seconds",
        help="a port that had a socket within this long is no target while it is closed (a "
        "service restarting under clients that retry); 0 off", origin=_NEW,
    )  # fmt: skip
    max_tracked_sources: int = setting(
        key="MAX_TRACKED_SOURCES", parse=t.int_range(1), default="65536", unit="count",
        help="sources counted at once, in two generations of half each: when the newer one "
        "is full the older one is forgotten, so a source keeps its evidence for at least "
        "half this many new sources after its last probe",
        origin=_NEW,
    )  # fmt: skip
    max_ports_per_source: int = setting(
        key="MAX_PORTS_PER_SOURCE", parse=t.int_range(1), default="64", unit="count",
        help="distinct ports remembered per source", origin=_NEW,
    )  # fmt: skip
    source_idle_timeout: float = setting(
        key="SOURCE_IDLE_TIMEOUT", parse=t.positive_duration, default="1h", unit="seconds",
        help="a source not seen for longer than this starts afresh; its evidence is freed "
        "within twice this time", origin=_NEW,
    )  # fmt: skip
    max_active_bans: int = setting(
        key="MAX_ACTIVE_BANS", parse=t.int_range(1), default="10000", unit="count",
        help="ban budget: bans in force at once, ranked by evidence", origin=_NEW,
    )  # fmt: skip
    ban_rate: float = setting(
        key="BAN_RATE", parse=t.number_range(0.001, 100000), default="20", unit="bans/second",
        help="new bans per second in each tier of strong evidence (sustained); weak, "
        "single-probe sources get half, from a bucket of their own", origin=_NEW,
    )  # fmt: skip
    ban_burst: int = setting(
        key="BAN_BURST", parse=t.int_range(1), default="100", unit="count",
        help="new bans allowed at once before BAN_RATE applies", origin=_NEW,
    )  # fmt: skip
    ban_strong_ports: int = setting(
        key="BAN_STRONG_PORTS", parse=t.int_range(1, 65535), default="5", unit="ports",
        help="distinct ports that make a source's evidence strong; twice, four and eight times "
        "as many, and a completed handshake, are higher tiers, each with BAN_RATE and "
        "BAN_BURST of its own (a source may spend a lower tier's tokens, never a higher "
        "one's); weak sources may fill only half of MAX_ACTIVE_BANS", origin=_NEW,
    )  # fmt: skip
    block_min_ports: int = setting(
        key="BLOCK_MIN_PORTS", parse=t.int_range(1, 65535), default="1", unit="ports",
        help="stricter policy: block on stealth evidence only after this many distinct "
        "ports (a completed handshake blocks at once); 1 is PortSentry's behaviour",
        origin=_NEW,
    )  # fmt: skip
    ban_repeat_window: float = setting(
        key="BAN_REPEAT_WINDOW", parse=t.positive_duration, default="30d", unit="seconds",
        help="earlier bans within this window make a source a repeat offender", origin=_NEW,
    )  # fmt: skip
    ipv6_prefix_after: int = setting(
        key="IPV6_PREFIX_AFTER", parse=t.int_range(0, 65535), default="0", unit="count",
        help="ban a whole IPv6 prefix (IPV6_PREFIX_LEN) once this many of its addresses are "
        "banned; 0 never widens. A prefix holding a never-block address is never banned",
        origin=_NEW,
    )  # fmt: skip
    ipv6_prefix_len: int = setting(
        key="IPV6_PREFIX_LEN", parse=t.int_range(16, 127), default="64", unit="bits",
        help="length of the IPv6 prefix a widened ban covers", origin=_NEW,
    )  # fmt: skip
    kill_run_cmd_ipv6: bool = setting(
        key="KILL_RUN_CMD_IPV6", parse=t.flag, default="0", unit="0/1",
        help="pass IPv6 targets to KILL_RUN_CMD/KILL_ROUTE/UNBLOCK_RUN_CMD (commands written "
        "for IPv4 often break on them); 0 skips such commands for IPv6 with a log line",
        origin=_NEW,
    )  # fmt: skip
    command_timeout: float = setting(
        key="COMMAND_TIMEOUT", parse=t.positive_duration, default="30s", unit="seconds",
        help="KILL_RUN_CMD, KILL_ROUTE and UNBLOCK_RUN_CMD are stopped after this long and "
        "count as failed", origin=_NEW,
    )  # fmt: skip
    commands_as_root: bool = setting(
        key="COMMANDS_AS_ROOT", parse=t.flag, default="0", unit="0/1",
        help="the service runs as the user portsentinel, and KILL_RUN_CMD, UNBLOCK_RUN_CMD and "
        "MAIL_COMMAND run as that user without its capabilities; 1 makes `portsentinel "
        "install` add a drop-in that runs the service, and so them, as root (still sandboxed)",
        origin=_NEW,
    )  # fmt: skip
    never_block_ssh_peers: bool = setting(
        key="NEVER_BLOCK_SSH_PEERS", parse=t.flag, default="1", unit="0/1",
        help="never block the peers of SSH sessions (established connections to SSH_PORTS); "
        "the kernel is asked before each ban, so a session opened a moment ago counts",
        origin=_NEW,
    )  # fmt: skip
    ack_probes: bool = setting(
        key="ACK_PROBES", parse=t.flag, default="1", unit="0/1",
        help="with a stealth TCP mode, also catch ACK, Window and Maimon scans (nmap -sA, -sW, "
        "-sM), which PortSentry misses: the kernel's connection tracking hands the daemon the "
        "TCP segments with ACK that belong to no connection (NFLOG group 5051, at most 2,000 a "
        "second); needs nft", origin=_NEW,
    )  # fmt: skip
    kernel_hold: bool = setting(
        key="KERNEL_HOLD", parse=t.flag, default="0", unit="0/1",
        help="the kernel itself drops a new connection's first packet to a watched port no "
        "socket uses and holds its source (new connections only) for KERNEL_HOLD_TIME, until "
        "the daemon bans or releases it: a scanner learns nothing. A forged probe delays a "
        "real client's new connections by up to the hold time; needs the nftables backend",
        origin=_NEW,
    )  # fmt: skip
    kernel_hold_time: float = setting(
        key="KERNEL_HOLD_TIME", parse=t.duration_range(1.0, 300.0), default="10s", unit="seconds",
        help="how long the kernel holds a source the daemon neither banned nor released",
        origin=_NEW,
    )  # fmt: skip
    quiet_repeats: float = setting(
        key="QUIET_REPEATS", parse=t.duration_range(0.0, 3600.0), default="10s", unit="seconds",
        help="a source already answered (alerted with BLOCK_x 0, say) whose repeats the log "
        "only summarises is counted in the kernel for this long: its probes of that protocol "
        "no longer reach the daemon, and the summary still counts them; 0: off; needs the "
        "nftables backend's ingress table",
        origin=_NEW,
    )  # fmt: skip
    ssh_ports: frozenset[int] = setting(
        key="SSH_PORTS", parse=t.port_list, default="22", unit="ports",
        help="local ports whose established peers count as SSH sessions", origin=_NEW,
    )  # fmt: skip
    event_retention: float = setting(
        key="EVENT_RETENTION", parse=t.positive_duration, default="30d", unit="seconds",
        help="events older than this are purged from the state store", origin=_NEW,
    )  # fmt: skip
    history_max_mib: int = setting(
        key="HISTORY_MAX_MIB", parse=t.int_range(1, 4096), default="16", unit="MiB",
        help="HISTORY_FILE and BLOCKED_FILE are rotated to FILE.1 past this size",
        origin=_NEW,
    )  # fmt: skip
    webhook_url: str = setting(
        key="WEBHOOK_URL", parse=o.webhook_url, default="", unit="URL",
        help="first triggers are POSTed here as JSON events (with host and ban); empty: off",
        origin=_NEW,
    )  # fmt: skip
    webhook_timeout: float = setting(
        key="WEBHOOK_TIMEOUT", parse=t.positive_duration, default="5s", unit="seconds",
        help="one webhook attempt gives up after this long; three attempts with backoff",
        origin=_NEW,
    )  # fmt: skip
    mail_to: tuple[str, ...] = setting(
        key="MAIL_TO", parse=o.mail_to, default="", unit="addresses",
        help="first triggers are mailed to these addresses through MAIL_COMMAND; empty: off",
        origin=_NEW,
    )  # fmt: skip
    mail_command: tuple[str, ...] = setting(
        key="MAIL_COMMAND", parse=o.argv_command, default=lambda: f"{paths.SENDMAIL} -t -oi",
        unit="command", help="the local MTA, given the message (with To and Subject) on "
        "standard input; never run through a shell", origin=_NEW,
    )  # fmt: skip
    mail_timeout: float = setting(
        key="MAIL_TIMEOUT", parse=t.positive_duration, default="30s", unit="seconds",
        help="MAIL_COMMAND is stopped after this long and the mail counts as failed",
        origin=_NEW,
    )  # fmt: skip
    notify_rate: int = setting(
        key="NOTIFY_RATE", parse=t.int_range(1, 10000), default="10", unit="per minute",
        help="notifications sent per minute on average, at most this many at once (a token "
        "bucket); the rest are summarised once a minute",
        origin=_NEW,
    )  # fmt: skip
    notify_on: NotifyOn = setting(  # noqa: RUF009 - a dataclasses.field
        key="NOTIFY_ON", parse=o.notify_on, default="alert", unit="level",
        help="alert notifies every trigger, block only those that got a response",
        origin=_NEW,
    )  # fmt: skip
    metrics_listen: tuple[str, int] | None = setting(
        key="METRICS_LISTEN", parse=o.listen_address, default="", unit="address:port",
        help="serve Prometheus metrics here, e.g. 127.0.0.1:9469; empty: off. At most 8 "
        "connections at once (more are answered 503), each closed 10 s after it opened",
        origin=_NEW,
    )  # fmt: skip
    metrics_allow_remote: bool = setting(
        key="METRICS_ALLOW_REMOTE", parse=t.flag, default="0", unit="0/1",
        help="1 lets METRICS_LISTEN be an address other than loopback", origin=_NEW,
    )  # fmt: skip
    defaults_file: str = setting(
        key="DEFAULTS_FILE", parse=t.path, default=lambda: paths.DEFAULTS_FILE, unit="path",
        help="Debian's TCP_MODE/UDP_MODE file, read when no --mode is given; a regular file "
        "of at most 1 MiB", origin=_NEW,
    )  # fmt: skip
    hosts_deny_file: str = setting(
        key="HOSTS_DENY_FILE", parse=t.path, default=lambda: paths.HOSTS_DENY, unit="path",
        help="the file KILL_HOSTS_DENY lines are appended to", origin=_NEW,
    )  # fmt: skip
    interfaces: tuple[str, ...] = setting(
        key="INTERFACES", parse=t.interfaces, default="", unit="interfaces",
        help="interfaces the stealth modes watch; empty: every interface but loopback, "
        "including those that appear later", origin=_NEW,
    )  # fmt: skip
    capture_ring_mib: int = setting(
        key="CAPTURE_RING_MIB", parse=t.int_range(1, 1024), default="16", unit="MiB",
        help="kernel ring buffer of the stealth capture, one each for IPv4 and IPv6; a "
        "larger ring rides out longer bursts without drops", origin=_NEW,
    )  # fmt: skip
    syslog: bool = setting(
        key="SYSLOG", parse=t.flag, default="0", unit="0/1",
        help="also send PortSentry-style lines to syslog (facility daemon, level notice); "
        "they always go to standard error, which systemd keeps in the journal", origin=_NEW,
    )  # fmt: skip
    log_format: str = setting(
        key="LOG_FORMAT", parse=t.log_format, default="", unit="version",
        help="whose words the log and HISTORY_FILE use: 1.2 (attackalert: lines, 1.2's history "
        "line) or 2.0 (the 'Scan from:' line, ISO 8601 times in the history); empty: 2.0 when "
        "the daemon is started with PortSentry 2.0's command line (--stealth, -c ...), else 1.2",
        origin=_NEW,
    )  # fmt: skip
    syslog_ident: str = setting(
        key="SYSLOG_IDENT", parse=t.text, default="portsentinel", unit="name",
        help="syslog identity of the lines; portsentry keeps old log filters working",
        origin=_NEW,
    )  # fmt: skip
    resolv_conf: str = setting(
        key="RESOLV_CONF", parse=t.path, default=lambda: paths.RESOLV_CONF, unit="path",
        help="resolver configuration; its name servers are never blocked. A regular file of "
        "at most 1 MiB; anything else is a warning and no resolver is known from it",
        origin=_NEW,
    )  # fmt: skip
    resolved_conf: str = setting(
        key="RESOLVED_CONF", parse=t.path, default=lambda: paths.RESOLVED_CONF, unit="path",
        help="systemd-resolved's list of upstream resolvers; read when RESOLV_CONF names only "
        "a local stub (127.0.0.53) or no name server at all: its name servers are never "
        "blocked either. A missing file is no warning (systemd-resolved does not run); empty: "
        "not read",
        origin=_NEW,
    )  # fmt: skip
    # --- the fleet: CrowdSec's Local API (fleet/; off while CROWDSEC_LAPI_URL is empty) ------
    crowdsec_lapi_url: str = setting(
        key="CROWDSEC_LAPI_URL", parse=o.webhook_url, default="", unit="URL",
        help="the fleet's CrowdSec Local API; empty: no fleet. https:// with a remote LAPI "
        "(plain http to an address other than loopback works, with a warning)", origin=_NEW,
    )  # fmt: skip
    crowdsec_credentials_file: str = setting(
        key="CROWDSEC_CREDENTIALS_FILE", parse=t.path, default="", unit="path",
        help="the machine's url/login/password file (cscli machines add NAME --auto -f FILE): "
        "this host pushes its bans with it", origin=_NEW,
    )  # fmt: skip
    crowdsec_bouncer_key_file: str = setting(
        key="CROWDSEC_BOUNCER_KEY_FILE", parse=t.path, default="", unit="path",
        help="a file holding this host's bouncer key (cscli -oraw bouncers add NAME): it pulls "
        "the fleet's decisions into its own sets with it", origin=_NEW,
    )  # fmt: skip
    crowdsec_ca_file: str = setting(
        key="CROWDSEC_CA_FILE", parse=t.path, default="", unit="path",
        help="CA certificates that sign LAPI's TLS certificate; empty: the system's", origin=_NEW,
    )  # fmt: skip
    crowdsec_push: bool = setting(
        key="CROWDSEC_PUSH", parse=t.flag, default="1", unit="0/1",
        help="push this host's bans (and weak reports, for sweeps) when credentials are set",
        origin=_NEW,
    )  # fmt: skip
    crowdsec_pull: bool = setting(
        key="CROWDSEC_PULL", parse=t.flag, default="1", unit="0/1",
        help="apply the fleet's decisions when a bouncer key is set", origin=_NEW,
    )  # fmt: skip
    crowdsec_poll_interval: float = setting(
        key="CROWDSEC_POLL_INTERVAL", parse=t.duration_range(0.2, 300.0), default="2s",
        unit="seconds", help="how often the fleet's new decisions are pulled", origin=_NEW,
    )  # fmt: skip
    crowdsec_resync_interval: float = setting(
        key="CROWDSEC_RESYNC_INTERVAL", parse=t.duration_range(5.0, 86400.0), default="5m",
        unit="seconds", help="how often every fleet decision is pulled again (LAPI 1.4.6's "
        "stream can miss one and never extends one)", origin=_NEW,
    )  # fmt: skip
    crowdsec_batch_max: int = setting(
        key="CROWDSEC_BATCH_MAX", parse=t.int_range(1, 1000), default="100", unit="alerts",
        help="alerts per POST to LAPI", origin=_NEW,
    )  # fmt: skip
    crowdsec_outbox_max: int = setting(
        key="CROWDSEC_OUTBOX_MAX", parse=t.int_range(10, 1_000_000), default="10000",
        unit="messages", help="messages kept for LAPI while it cannot take them (reports "
        "give way first, then the oldest bans)", origin=_NEW,
    )  # fmt: skip
    crowdsec_timeout: float = setting(
        key="CROWDSEC_TIMEOUT", parse=t.duration_range(0.5, 60.0), default="5s",
        unit="seconds", help="one HTTP request to LAPI gives up after this long", origin=_NEW,
    )  # fmt: skip
    crowdsec_permanent_cap: float = setting(
        key="CROWDSEC_PERMANENT_CAP", parse=t.duration_range(60.0, 315_360_000.0), default="30d",
        unit="seconds", help="how long the fleet applies a permanent local ban", origin=_NEW,
    )  # fmt: skip
    fleet_push_delay: float = setting(
        key="FLEET_PUSH_DELAY", parse=t.duration_range(0.0, 86400.0), default="5m",
        unit="seconds", help="a ban without strong evidence (a completed handshake, or an "
        "operator's) goes to the fleet once it has lasted this long (the decoy window)",
        origin=_NEW,
    )  # fmt: skip
    fleet_sweep_hosts: int = setting(
        key="FLEET_SWEEP_HOSTS", parse=t.int_range(2, 10000), default="3", unit="hosts",
        help="a source reported probing this many hosts within FLEET_SWEEP_WINDOW is banned "
        "fleet-wide (kind SWEEP)", origin=_NEW,
    )  # fmt: skip
    fleet_sweep_window: float = setting(
        key="FLEET_SWEEP_WINDOW", parse=t.duration_range(5.0, 86400.0), default="60s",
        unit="seconds", help="the window of the fleet's sweep rule", origin=_NEW,
    )  # fmt: skip
    fleet_sweep_reports: int = setting(
        key="FLEET_SWEEP_REPORTS", parse=t.int_range(0, 100_000), default="120",
        unit="alerts per hour", help="weak-evidence reports (alerts without a decision, for "
        "the sweep rule) this host sends at most; each source once per FLEET_SWEEP_WINDOW. "
        "They count toward LAPI's flush.max_items (README); 0: none", origin=_NEW,
    )  # fmt: skip


def _collect() -> tuple[SettingSpec, ...]:
    specs = []
    for field in dataclasses.fields(Settings):
        spec = field.metadata["spec"]
        if not isinstance(spec, SettingSpec) or spec.attr != field.name:
            raise TypeError(f"Settings.{field.name} is not declared with setting(key=...)")
        specs.append(spec)
    return tuple(specs)


SETTINGS: tuple[SettingSpec, ...] = _collect()
_BY_KEY: dict[str, SettingSpec] = {spec.key: spec for spec in SETTINGS}
KEYS: frozenset[str] = frozenset(_BY_KEY)


def spec_for(key: str) -> SettingSpec:
    """The declaration of ``key`` (exact, upper case); ``KeyError`` if there is none."""
    return _BY_KEY[key]
