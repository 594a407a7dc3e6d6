"""Commands that run the pipeline: ``run`` (the daemon) and ``once`` (one forced cycle)."""

from __future__ import annotations

import argparse
import sys

from keysetd.cli.configured import config_from, setup_logging
from keysetd.cli.exits import EXIT_FAILED, EXIT_OK

__all__ = ["cmd_once", "cmd_run"]


def cmd_run(args: argparse.Namespace) -> int:
    from keysetd.daemon import Daemon

    config = config_from(args)
    setup_logging(config, args)
    return Daemon(config).run()


def cmd_once(args: argparse.Namespace) -> int:
    from keysetd.pipeline import Pipeline

    config = config_from(args)
    setup_logging(config, args)
    pipeline = Pipeline.open(config)
    pipeline.state.lock()
    try:
        result = pipeline.cycle(force=True)
    finally:
        pipeline.close()
        pipeline.state.unlock()
    if not result.ok:
        print(f"keysetd: {result.error}", file=sys.stderr)
        if result.from_lkg:
            print("keysetd: outputs were published from the last-known-good", file=sys.stderr)
        return EXIT_FAILED
    changed = ", ".join(result.changed) or "none"
    print(f"outputs current (fingerprint {result.fingerprint}); changed: {changed}")
    for message in result.notify_errors:  # the outputs stand; a consumer was not told
        print(f"keysetd: {message}", file=sys.stderr)
    return EXIT_FAILED if result.notify_errors else EXIT_OK
