"""``python -m edge``: the same as the ``linewatch-edge`` command."""

import sys

from edge.cli import main

sys.exit(main())
