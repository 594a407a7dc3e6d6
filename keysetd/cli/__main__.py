"""``python -m keysetd.cli``, as it worked when the command line was one module."""

import sys

from keysetd.cli import main

sys.exit(main())
