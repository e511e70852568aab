import sys

from linewatch.trainer.cli import main

sys.exit(main())
