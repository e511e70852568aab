"""`python -m linewatch.export` is `linewatch-export`."""

import sys

from linewatch.export.cli import main

sys.exit(main())
