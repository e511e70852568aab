"""``python -m linewatch.edge``: the same as the ``linewatch-edge`` command."""

import sys

from linewatch.edge.cli import main

sys.exit(main())
