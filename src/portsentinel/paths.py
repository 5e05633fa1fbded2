"""Every place on the host that PortSentinel reads or writes by default, and its exit codes:
one constant each, so no path or status is written twice.

Every path here is only a default: a setting or an option overrides each one (DESIGN.md), and
the tests point them all at temporary files. Code that uses a default reads it from this module
when it needs it (``paths.STATE_DIR``, not a copy taken at import), so that one assignment
redirects it everywhere.
"""

from __future__ import annotations

# The program's own files.
CONFIG_FILE = "/etc/portsentinel/portsentinel.conf"
CONFIG_DIR = "/etc/portsentinel"
IGNORE_FILE = "/etc/portsentinel/portsentinel.ignore"
STATE_DIR = "/var/lib/portsentinel"
STORE_NAME = "portsentinel.db"
LOCK_NAME = "portsentinel.lock"
RUN_DIR = "/run/portsentinel"
SOCKET_NAME = "control.sock"

# The host's files that PortSentinel reads (and, for hosts.deny, writes through KILL_HOSTS_DENY).
DEFAULTS_FILE = "/etc/default/portsentry"  # Debian's TCP_MODE/UDP_MODE
RESOLV_CONF = "/etc/resolv.conf"
RESOLVED_CONF = "/run/systemd/resolve/resolv.conf"  # systemd-resolved's upstream resolvers
HOSTS_DENY = "/etc/hosts.deny"
SENDMAIL = "/usr/sbin/sendmail"

# PortSentry's own, read by ``migrate``.
PORTSENTRY_DIR = "/etc/portsentry"
PORTSENTRY_STATE_DIR = "/var/lib/portsentry"

# What ``install`` writes.
UNIT_DIR = "/etc/systemd/system"
MAN_DIR = "/usr/local/share/man"
LOGROTATE_DIR = "/etc/logrotate.d"
SYSUSERS_DIR = "/etc/sysusers.d"
PROGRAM = "/usr/local/bin/portsentinel"
# What the Debian package installs (scripts/build_deb.py): install then writes drop-ins only.
PACKAGED_UNIT = "/lib/systemd/system/portsentinel.service"
PACKAGED_PROGRAM = "/usr/sbin/portsentinel"

# Exit status of every verb (DESIGN.md).
EXIT_OK = 0
EXIT_FAILURE = 1  # a runtime failure, "daemon not running", "address not found"
EXIT_USAGE = 2  # usage or configuration error
