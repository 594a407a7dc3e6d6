"""``python -m keysetd_nats_callout``: the same as the ``keysetd-nats-callout`` script."""

from __future__ import annotations

import sys

from keysetd_nats_callout.cli import main

sys.exit(main())
