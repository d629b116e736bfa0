"""``python -m amc.cli``: the ``amc`` command."""

import sys

from amc.cli import main

sys.exit(main())
