"""`python -m deploy.refresh` is `linewatch-refresh`."""

import sys

from deploy.refresh.cli import main

sys.exit(main())
