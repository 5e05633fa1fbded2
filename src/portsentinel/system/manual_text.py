"""The man pages' fixed prose, kept apart from the code that renders them (``manual.py``):
the description, exit status, signals, metrics and PortSentry invocation of portsentinel(8),
and the syntax, ignore-file and compatibility sections of portsentinel.conf(5).
"""

from __future__ import annotations

MAN8_DESCRIPTION = (
    "PortSentinel watches every TCP and UDP port of a Linux host, IPv4 and IPv6, notices port "
    "scans, logs them in PortSentry's words and, when configured to, blocks the scanner "
    "(nftables by default, with bans that expire) without ever blocking the host's own "
    "addresses, its gateways, resolvers or the peers of current SSH sessions.",
    "It is a modern re-creation of PortSentry 1.2: an existing portsentry.conf is a valid "
    "configuration, the modes tcp, udp, stcp, sudp, atcp and audp keep their meaning, and the "
    "history and blocked files keep their format, so fail2ban's portsentry filter still works.",
    "Options follow the verb. The daemon runs in the foreground (systemd style); "
    "portsentinel install puts a systemd unit in place.",
)

EXIT_STATUS = (
    ("0", "Success. config check also exits 0 when it only has warnings."),
    (
        "1",
        'Runtime failure, including "daemon not running" for verbs that need it and '
        '"address not found".',
    ),
    ("2", "Usage or configuration error; each error reads FILE:LINE: KEY: what (expected ...)."),
)

SIGNALS = (
    ("SIGTERM, SIGINT", "Stop: PortSentry's two shutdown lines, a statistics line, exit 0."),
    (
        "SIGHUP",
        "Reload, as portsentinel reload and systemctl reload portsentinel do: the "
        "configuration and ignore files are read again, evidence and bans are kept, a "
        "configuration with errors is refused (logged; the running one stays), and the events "
        "file is reopened, so logrotate can move it.",
    ),
)

METRICS = (
    'Off by default. METRICS_LISTEN="127.0.0.1:9469" in the configuration (then a restart: '
    "the endpoint opens at the start, a reload does not open it) serves Prometheus metrics "
    "at http://127.0.0.1:9469/metrics: every "
    "counter of portsentinel status with the portsentinel_ prefix (packets, probes by kind, "
    "decisions by action, bans added and active, kernel drops, events lost, notifications, "
    "the state store's outage, each backend's health, portsentinel_degraded) and the process's "
    "CPU and memory.",
    'Only a loopback address is accepted unless METRICS_ALLOW_REMOTE="1"; the configuration '
    "is refused otherwise, by config check too. At most 8 connections are served at once "
    "(more are answered 503) and each is closed 10 s after it opened.",
)

PORTSENTRY_FLAGS = (
    "PortSentry's own invocation runs the daemon too: portsentinel -atcp is portsentinel run "
    "--mode atcp, and portsentinel -atcp -audp runs both modes in one process (1.2 needed one "
    "process per mode). Any options follow the flags.",
    "PortSentry 2.0's invocation does as well: a command line that starts with one of its "
    "options (portsentinel --stealth -c /etc/portsentry/portsentry.conf, or just -c FILE) "
    "runs the daemon with 2.0's options, beside PortSentinel's --state-dir, --events and "
    "--dry-run.",
)

PORTSENTRY2_WORDS = (
    "Unless the configuration sets LOG_FORMAT, a daemon started this way logs in 2.0's "
    "words (LOG_FORMAT=2.0): the Scan from: line for every probe, on standard output (or "
    "syslog with -l syslog), and with 2.0's ISO 8601 time in front in HISTORY_FILE, each of "
    "its fields saying what PortSentinel decided. One started as portsentinel run or with "
    "1.2's flags logs in 1.2's words.",
    "Where 2.0 differs, PortSentinel keeps its own behaviour: SIGHUP reloads the "
    "configuration (2.0 dies of it), bans expire (BAN_DURATION), HISTORY_FILE is appended to "
    "and rotated (2.0 truncates it at each start), the host's own addresses are never acted "
    "against (-L is accepted and changes nothing), and SCAN_TRIGGER counts one source's "
    "probes of both protocols together, as 2.0 does, whichever words are chosen.",
)

SYNTAX = (
    'One setting per line: KEY="value". Spaces around = are allowed, a # starts a comment '
    "(also after a value), and single quotes or an unquoted single word work too. This is "
    "PortSentry's syntax, so an existing portsentry.conf is a valid configuration.",
    "The default path is /etc/portsentinel/portsentinel.conf; --config FILE names another. "
    "Without a file the built-in defaults apply. portsentinel config defaults prints every "
    "setting with its default as a commented file; portsentinel config check --config FILE "
    "validates a file and prints the effective settings with the line each came from.",
    'An empty value (KEY="") means the built-in default, except for text, command and path '
    "settings, where it means none. A repeated key keeps the last value, with a warning "
    "(PortSentry 1.2 kept the first: portsentinel migrate comments out later copies). An "
    "unknown key is a warning naming the closest known key. Errors read FILE:LINE: KEY: what "
    "is wrong (expected ...) and stop the start, all of them reported at once.",
    "Durations are written 30s, 15m, 1h or 7d (a bare number is seconds); ban lengths also "
    "accept permanent. Port lists are comma-separated ports or inclusive ranges a-b.",
)

IGNORE_FILE = (
    "IGNORE_FILE: one IPv4 or IPv6 address or CIDR range per line; # starts a comment and "
    "anything after the first word is ignored. Host bits are masked (192.168.1.5/24 is the "
    "whole /24), dotted netmasks work, /0 really means every address (with a warning, since "
    "it switches every response off). An entry that is not an address stops the start.",
    "With LOG_FORMAT=2.0 (a PortSentry 2.0 installation) what 2.0 would refuse or never "
    "match is a warning and the line is read as above: a character outside 0-9, a-f, '.', "
    "':' and '/' (a space, a comment, upper case), fatal in 2.0; an entry with host bits "
    "set, which never matched in 2.0.",
    'DEFAULTS_FILE: shell syntax, TCP_MODE="atcp" and UDP_MODE="audp" (Debian\'s '
    "/etc/default/portsentry). An empty value runs no mode of that protocol.",
)

COMPATIBILITY = (
    "BLOCK_BACKEND=nftables (the default) replaces KILL_ROUTE; KILL_HOSTS_DENY and "
    "KILL_RUN_CMD still run when set. BLOCK_BACKEND=legacy runs KILL_ROUTE as PortSentry did "
    "(as an argument list, without a shell).",
    "Bans expire after BAN_DURATION (1h, doubled for repeat offenders up to BAN_MAX_DURATION); "
    'BAN_DURATION="permanent" keeps PortSentry\'s behaviour.',
    "Values from the network never reach a shell: in KILL_RUN_CMD, $TARGET$, $PORT$ and "
    "$MODE$ are validated and passed as separate arguments.",
    "SCAN_TRIGGER counts TCP and UDP apart with LOG_FORMAT=1.2 (1.2 ran one process per "
    "protocol) and together with LOG_FORMAT=2.0 (2.0's one counter per source).",
    "LOG_FORMAT=2.0 writes 2.0's Scan from: line; its fields say what PortSentinel decided: "
    "ignored for the ignore list and the host's own addresses (the rest unset) and for the "
    "never-block set (after the trigger: noblock), triggered false below SCAN_TRIGGER, "
    "noblock for BLOCK 0 (every probe again, never already blocked), blocked false for a ban "
    "the ban budget or BLOCK_MIN_PORTS refused, and in a dry run. HOST is the address.",
    "PortSentry 2.0's fail2ban filter matches every Scan from: line, ignored sources too; "
    "packaging/fail2ban has stricter filters for both formats and a jail.",
    "A port a service used within RECENTLY_IN_USE (10m) is no target while it is closed: the "
    'clients of a restarting service are not reported; RECENTLY_IN_USE="0" is PortSentry\'s '
    "way.",
    '"Already blocked" compares exact addresses (1.2 matched substrings).',
)
