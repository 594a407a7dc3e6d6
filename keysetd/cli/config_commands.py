"""Commands about configuration and what it may name: ``check-config`` and ``plugins``."""

from __future__ import annotations

import argparse

from keysetd.cli.configured import config_from
from keysetd.cli.exits import EXIT_OK

__all__ = ["cmd_check_config", "cmd_plugins"]


def cmd_check_config(args: argparse.Namespace) -> int:
    from keysetd.strict import config_violations

    config = config_from(args)
    print(f"{config.path}: ok" + (" (strict mode)" if config.settings.strict else ""))
    for violation in config_violations(config):
        print(f"  warning (refused with strict = true): {violation}")
    print(f"  source: {config.build_source().describe()}")
    for output in config.build_outputs():
        print(
            f"  output {output.name}: {output.config.type} -> {output.config.path}"
            f" ({output.role.value}, mode {output.mode:04o})"
        )
    for notifier in config.build_notifiers():
        follows = ",".join(notifier.config.outputs) if notifier.config.outputs else "any output"
        print(f"  notify {notifier.name}: {notifier.config.type} on {follows}")
    return EXIT_OK


def cmd_plugins(args: argparse.Namespace) -> int:
    from keysetd.registry import available

    for info in available():
        kind = info.group.removeprefix("keysetd.")
        print(f"{kind:10} {info.name:16} {info.target:50} ({info.distribution})")
    return EXIT_OK
