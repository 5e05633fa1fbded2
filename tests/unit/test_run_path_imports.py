"""The daemon (``portsentinel run``) keeps resident every module it imports, so the run path
must not import what only other verbs, or optional features that are off, need.

Each check runs a fresh interpreter: this test process has imported everything already.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import portsentinel

# Modules the daemon does not need unless a feature asks for them, each weighing from a few
# hundred KiB (decimal, the report) to several MiB (ssl, http, prometheus_client) of RSS.
NOT_ON_RUN_PATH = (
    "urllib.request",  # the webhook notifier, only with WEBHOOK_URL
    "http.client",
    "ssl",
    "email.message",  # mail notifications, only with MAIL_TO
    "prometheus_client",  # the metrics endpoint, only with METRICS_LISTEN
    "wsgiref.simple_server",
    "decimal",  # number rendering, only for values whose repr has an exponent
    "portsentinel.report.data",  # the report verb
    "portsentinel.report.html",
    "portsentinel.report.svg",
    "portsentinel.cli.ban_operations",  # list, block, unblock, allow
    "portsentinel.cli.history_views",  # why, history
    "portsentinel.cli.history_text",
    "portsentinel.cli.tables",
    "portsentinel.cli.replay_capture",  # the replay verb
    "portsentinel.cli.replay_record",
    "portsentinel.capture.pcapfile",
    "portsentinel.system.install",  # install, uninstall, migrate
    "portsentinel.system.migrate",
    "portsentinel.system.manual",  # the docs, at build time
)

# What ``run`` does before it opens a capture: parse its arguments, then ask the notifier and
# the metrics endpoint whether they are on (with the default settings: both off).
RUN_PATH = """
import json, sys
from portsentinel.cli import main as cli
from portsentinel.cli import run as run_verbs
from portsentinel.alert.notify import NotifyConfig
from portsentinel.config.schema import Settings
from portsentinel.daemon.metrics import MetricsServer

args = cli.build_parser().parse_args(cli.translate_portsentry_flags(["-atcp", "-audp"]))
assert args.handler is run_verbs.cmd_run
assert not NotifyConfig.from_settings(Settings(), await_bans=True).enabled
assert MetricsServer.from_settings(Settings(), dict) is None
print(json.dumps(sorted(sys.modules)))
"""


def _modules_after(code: str) -> set[str]:
    """``sys.modules`` of a fresh interpreter after ``code``, which prints it as JSON last."""
    # Not under coverage (CI's patch = subprocess): coverage.py imports modules of its own.
    env = {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE_PROCESS_")}
    src = str(Path(portsentinel.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    modules: list[str] = json.loads(done.stdout.splitlines()[-1])
    return set(modules)


def test_the_run_path_leaves_optional_and_other_verbs_modules_unimported() -> None:
    loaded = _modules_after(RUN_PATH)
    assert {"portsentinel.daemon.service", "portsentinel.daemon.pipeline"} <= loaded  # the run path
    assert sorted(m for m in NOT_ON_RUN_PATH if m in loaded) == []


def test_the_verbs_that_need_them_still_import_them() -> None:
    # The lazy imports are real imports: the verbs' handlers get their modules on demand.
    code = (
        "import json, sys\n"
        "from portsentinel.cli import main as cli\n"
        "cli.main(['list', '--state-dir', '/nonexistent/portsentinel-test'])\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    assert "portsentinel.cli.ban_operations" in _modules_after(code)
