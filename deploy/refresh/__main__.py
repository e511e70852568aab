"""`python -m linewatch.deploy.refresh` is `linewatch-refresh`."""

import sys

from linewatch.deploy.refresh.cli import main

sys.exit(main())
