"""The files that make PortSentinel a system service: the systemd unit, its drop-ins, the
sysusers.d line of its user and the logrotate rules, as text.

They live in the package (not only in ``packaging/``) so that ``portsentinel install`` works
from a wheel; ``scripts/gen_docs.py`` writes the same text to ``packaging/`` for packagers,
and a test keeps the two equal.
"""

from __future__ import annotations

from portsentinel import paths

UNIT_NAME = "portsentinel.service"
USER = "portsentinel"  # the service's own system user and group (sysusers.d, the .deb)

_UNIT = """\
# PortSentinel: port-scan detection and active response (a modern PortSentry).
# Installed by `portsentinel install` or the Debian package (source:
# src/portsentinel/system/service_files.py). Change it with a drop-in
# (`systemctl edit portsentinel`), not here: an upgrade rewrites it.
#
# The sandbox (`systemd-analyze security portsentinel` rates it 1.9 OK), and what a
# configuration may need added:
# - It runs as the system user portsentinel with three ambient capabilities: CAP_NET_RAW
#   (packet capture), CAP_NET_ADMIN (nftables, routes, conntrack over netlink),
#   CAP_NET_BIND_SERVICE (the tcp/udp modes bind ports below 1024). It cannot read
#   /etc/shadow or the SSH host keys. The configuration is root:portsentinel 0640.
# - Writable: only the state directory (/var/lib/portsentinel) and /var/log/portsentinel
#   (ProtectSystem=strict). When the configuration writes elsewhere, `portsentinel install`
#   adds the drop-in portsentinel.service.d/files.conf with exactly those paths and makes
#   them writable for the group portsentinel: KILL_HOSTS_DENY's file (the file alone:
#   it is then rewritten in place) and the directory of a HISTORY_FILE or BLOCKED_FILE kept
#   in /var/lib/portsentry by `portsentinel migrate` (fail2ban's portsentry jail reads it).
# - KILL_RUN_CMD, UNBLOCK_RUN_CMD and MAIL_COMMAND run as portsentinel with no capability
#   (setpriv clears them), in this sandbox: a script written for root that writes files,
#   changes the firewall or runs a set-id program (postfix's postdrop, sudo) fails. For
#   mail, use an MTA that submits over SMTP (msmtp, dma/nullmailer's sendmail set up for
#   it). COMMANDS_AS_ROOT="1" makes `portsentinel install` add a drop-in (root.conf) that
#   runs the service, and so these commands, as root, still in this sandbox. KILL_ROUTE
#   (BLOCK_BACKEND=legacy) keeps the capabilities: it changes routes.
# - Readiness and the watchdog: the daemon says READY=1 once it watches the ports and
#   sends WATCHDOG=1 from its loop; a loop stuck for WatchdogSec is killed and restarted.
# - Events: add `--events /var/log/portsentinel/events.jsonl` to ExecStart in a drop-in;
#   logrotate rotates that directory and reloads the daemon, which reopens the file.
# - sched_setattr (of @resources): the detection loop asks for a 0.1 ms time slice, so a
#   probe wakes it at once on a busy CPU (Linux 6.12+; no privilege, no more CPU time).

[Unit]
Description=PortSentinel port-scan detector
Documentation=man:portsentinel(8) man:portsentinel.conf(5)
Wants=network-online.target
After=network-online.target nftables.service

[Service]
Type=notify
NotifyAccess=main
ExecStart={exec_start} run
ExecReload=/bin/kill -HUP $MAINPID
Restart=on-failure
RestartSec=2s
WatchdogSec=30s
User=portsentinel
Group=portsentinel
CapabilityBoundingSet=CAP_NET_RAW CAP_NET_ADMIN CAP_NET_BIND_SERVICE
AmbientCapabilities=CAP_NET_RAW CAP_NET_ADMIN CAP_NET_BIND_SERVICE
NoNewPrivileges=yes
UMask=0077
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
DevicePolicy=closed
PrivateMounts=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
ProtectProc=invisible
ProcSubset=pid
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
RemoveIPC=yes
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged @resources
SystemCallFilter=sched_setattr
SystemCallErrorNumber=EPERM
RuntimeDirectory=portsentinel
StateDirectory=portsentinel
LogsDirectory=portsentinel
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK AF_PACKET

[Install]
WantedBy=multi-user.target
"""

FILES_DROPIN = "portsentinel.service.d/files.conf"
ROOT_DROPIN = "portsentinel.service.d/root.conf"
OLD_DROPINS = ("portsentinel.service.d/hosts-deny.conf",)  # written by earlier versions

_FILES = """\
# Written by `portsentinel install`: the configuration writes these paths outside the
# state directory (KILL_HOSTS_DENY's file; the directory of PortSentry's history and
# blocked files). Install made them writable for the group portsentinel, and removes this
# drop-in again when the configuration no longer writes them.
[Service]
"""

ROOT = """\
# Written by `portsentinel install` because the configuration sets COMMANDS_AS_ROOT="1":
# the service, and so KILL_RUN_CMD, UNBLOCK_RUN_CMD and MAIL_COMMAND, run as root (with
# the unit's capabilities and sandbox). Remove the setting and run install again to undo.
[Service]
User=root
Group=root
"""

SYSUSERS = """\
# The system user the PortSentinel service runs as (sysusers.d(5)).
u portsentinel - "PortSentinel port-scan detector" /var/lib/portsentinel /usr/sbin/nologin
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
    create 0640
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


def files_dropin(paths_: list[str]) -> str:
    """The drop-in that makes ``paths_`` (absolute, without spaces) writable."""
    for path in paths_:
        if not path.startswith("/") or any(c.isspace() for c in path):
            raise ValueError(f"ReadWritePaths needs an absolute path without spaces: {path!r}")
    # "-": a path that went missing leaves the service running (that action then fails and
    # says so) instead of failing the whole sandbox at the start
    return _FILES + "".join(f"ReadWritePaths=-{path}\n" for path in paths_)
