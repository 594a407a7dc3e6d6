"""What a command that takes ``--config`` starts with: the checked config, then logging.

Imported lazily so the offline commands (validate, verify, keygen) never load config code.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from keysetd.errors import ConfigError

if TYPE_CHECKING:
    from keysetd.config import Config

__all__ = ["config_from", "setup_logging"]


def config_from(args: argparse.Namespace) -> Config:
    """The config ``--config`` or ``KEYSETD_CONFIG`` names, loaded and checked (ConfigError)."""
    from keysetd.config import config_path, load_config

    path = config_path(args.config)
    if path is None:
        raise ConfigError("no config given: use --config PATH or set KEYSETD_CONFIG")
    from keysetd.strict import checked

    return checked(load_config(path))


def setup_logging(config: Config, args: argparse.Namespace) -> None:
    """``--log-format`` wins over the config's; the level is the config's."""
    from keysetd.log import configure

    configure(args.log_format or config.settings.log_format, config.settings.log_level)
