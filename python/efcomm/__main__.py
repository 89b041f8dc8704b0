"""``python -m efcomm``: the ``efcomm`` command (efcomm.cli)."""

import sys

from .cli import main

sys.exit(main())
