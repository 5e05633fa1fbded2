"""The files that make PortSentinel a system service: the systemd unit, its hosts.deny drop-in
and the logrotate rules, as text.

They live in the package (not only in ``packaging/``) so that ``portsentinel install`` works
from a wheel; ``scripts/gen_docs.py`` writes the same text to ``packaging/`` for packagers,
and a test keeps the two equal.
"""

from __future__ import annotations

from portsentinel import paths

UNIT_NAME = "portsentinel.service"

_UNIT = """\
# PortSentinel: port-scan detection and active response (a modern PortSentry).
# Installed by `portsentinel install` (source: src/portsentinel/system/service_files.py).
# Change it with a drop-in (`systemctl edit portsentinel`), not here: install rewrites it.
#
# The sandbox, and what a configuration may need added:
# - Capabilities: CAP_NET_RAW (packet capture), CAP_NET_ADMIN (nftables, routes, conntrack
#   over netlink), CAP_NET_BIND_SERVICE (the tcp/udp modes bind ports below 1024). The
#   daemon runs as root with no other capability.
# - ProtectSystem=strict: only ReadWritePaths are writable. KILL_HOSTS_DENY rewrites
#   /etc/hosts.deny through a temporary file and a rename, which needs /etc itself:
#   `portsentinel install` adds the drop-in portsentinel.service.d/hosts-deny.conf
#   (ReadWritePaths=/etc) when the configuration blocks through hosts.deny.
# - /var/lib/portsentry is writable when it exists, so that a HISTORY_FILE carried over by
#   `portsentinel migrate` keeps feeding fail2ban's portsentry jail. /run/xtables.lock is
#   writable when it exists, for iptables-legacy (BLOCK_BACKEND=iptables).
# - KILL_RUN_CMD, KILL_ROUTE, UNBLOCK_RUN_CMD and MAIL_COMMAND run inside this sandbox: a
#   command that writes elsewhere, or a set-id program (postfix's postdrop, exim, sudo),
#   fails under NoNewPrivileges=yes. For mail, use an MTA that submits over SMTP (msmtp,
#   `sendmail` of dma/nullmailer set up for it), or relax the sandbox in a drop-in.
# - Events: add `--events /var/log/portsentinel/events.jsonl` to ExecStart in a drop-in;
#   logrotate rotates that directory and reloads the daemon, which reopens the file.

[Unit]
Description=PortSentinel port-scan detector
Documentation=man:portsentinel(8) man:portsentinel.conf(5)
Wants=network-online.target
After=network-online.target nftables.service

[Service]
Type=simple
ExecStart={exec_start} run
ExecReload=/bin/kill -HUP $MAINPID
Restart=on-failure
RestartSec=2s
CapabilityBoundingSet=CAP_NET_RAW CAP_NET_ADMIN CAP_NET_BIND_SERVICE
AmbientCapabilities=CAP_NET_RAW CAP_NET_ADMIN CAP_NET_BIND_SERVICE
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
ProtectKernelTunables=yes
RuntimeDirectory=portsentinel
StateDirectory=portsentinel
LogsDirectory=portsentinel
ReadWritePaths=/var/lib/portsentinel /var/log /run/portsentinel
ReadWritePaths=-/var/lib/portsentry -/run/xtables.lock
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK AF_PACKET

[Install]
WantedBy=multi-user.target
"""

HOSTS_DENY_DROPIN = "portsentinel.service.d/hosts-deny.conf"

_HOSTS_DENY = """\
# Written by `portsentinel install` because the configuration blocks through hosts.deny
# (KILL_HOSTS_DENY with BLOCK_TCP or BLOCK_UDP at 1). The file is rewritten through a
# temporary file and a rename, so its directory must be writable in the sandbox.
# `portsentinel install` removes this drop-in again when hosts.deny is no longer used.
[Service]
ReadWritePaths={directory}
"""

LOGROTATE = """\
# Rotation of PortSentinel's files. Installed by `portsentinel install` as
# /etc/logrotate.d/portsentinel (source: src/portsentinel/system/service_files.py).
#
# HISTORY_FILE and BLOCKED_FILE (PortSentry's formats; fail2ban reads the history) are
# opened for every line written, so a plain rename is enough: the next line starts a new
# file. dateext keeps logrotate's names (FILE-20260101) apart from the daemon's own
# size-bound FILE.1 (HISTORY_MAX_MIB). The blocked files are named after the mode.
/var/lib/portsentinel/*.history
/var/lib/portsentinel/*.blocked.tcp
/var/lib/portsentinel/*.blocked.?tcp
/var/lib/portsentinel/*.blocked.udp
/var/lib/portsentinel/*.blocked.?udp
/var/lib/portsentry/portsentry.history
/var/lib/portsentry/portsentry.blocked.tcp
/var/lib/portsentry/portsentry.blocked.?tcp
/var/lib/portsentry/portsentry.blocked.udp
/var/lib/portsentry/portsentry.blocked.?udp
{
    weekly
    maxsize 16M
    rotate 8
    dateext
    compress
    delaycompress
    missingok
    notifempty
    create 0640 root root
}

# JSON events (`portsentinel run --events /var/log/portsentinel/events.jsonl`) and other
# logs in the service's LogsDirectory. The daemon keeps the events file open; a reload
# (SIGHUP) makes it continue in a new file at the same path.
/var/log/portsentinel/*.jsonl
/var/log/portsentinel/*.log
{
    daily
    maxsize 64M
    rotate 14
    dateext
    compress
    delaycompress
    missingok
    notifempty
    sharedscripts
    postrotate
        systemctl reload portsentinel.service >/dev/null 2>&1 || true
    endscript
}
"""


def unit_text(exec_start: str | None = None) -> str:
    """The unit, running ``exec_start run`` (a path without spaces; default the installed
    program, ``paths.PROGRAM``)."""
    if exec_start is None:
        exec_start = paths.PROGRAM
    if not exec_start.startswith("/") or any(c.isspace() for c in exec_start):
        raise ValueError(f"ExecStart needs an absolute path without spaces: {exec_start!r}")
    return _UNIT.replace("{exec_start}", exec_start)


def hosts_deny_dropin(directory: str) -> str:
    """The drop-in that makes ``directory`` (that of HOSTS_DENY_FILE) writable."""
    if not directory.startswith("/") or any(c.isspace() for c in directory):
        raise ValueError(f"ReadWritePaths needs an absolute path without spaces: {directory!r}")
    return _HOSTS_DENY.replace("{directory}", directory)
