"""``python -m portsentinel`` runs the command line."""

import sys

from portsentinel.cli import main

sys.exit(main())
