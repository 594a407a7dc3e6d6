"""``python -m keysetd``."""

import sys

from keysetd.cli import main

sys.exit(main())
