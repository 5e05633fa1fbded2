"""``python -m portsentinel`` runs the command line."""

import sys

from portsentinel.cli.main import main

sys.exit(main())
