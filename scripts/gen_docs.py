#!/usr/bin/env python3
"""Write the generated documentation and packaging files, or check that they are current.

    python scripts/gen_docs.py          # (re)write them
    python scripts/gen_docs.py --check  # exit 1 and name the stale ones

What is written comes from the code: docs/configuration.md and portsentinel.conf(5) from the
setting declarations (src/portsentinel/config/), portsentinel(8) from the command line parser
(cli's, built here and passed to the renderer), packaging/portsentinel.conf from ``config
defaults``, and the systemd unit and logrotate rules from
src/portsentinel/system/service_files.py. The man pages go to src/portsentinel/system/man/,
package data that ``portsentinel install`` copies. Run it after changing any of those;
tests/unit/system/test_manual.py fails until the committed files match.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from portsentinel.cli import portsentry2
from portsentinel.cli.main import build_parser
from portsentinel.system.manual import generated_files

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only report stale files")
    args = parser.parse_args(argv)
    stale = []
    for name, text in generated_files(build_parser(), portsentry2.build_parser()).items():
        path = REPO / name
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text:
            continue
        stale.append(name)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    verb = "stale (run python scripts/gen_docs.py)" if args.check else "written"
    for name in stale:
        print(f"{verb}: {name}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
