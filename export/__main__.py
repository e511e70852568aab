"""`python -m export` is `linewatch-export`."""

import sys

from export.cli import main

sys.exit(main())
