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
    """The config ``--config`` or ``KEYSETD_CONFIG`` names, loaded and checked (ConfigError).

    With neither, an open-rgs deployment's ``RGS_*`` variables are the whole config
    (``keysetd.config.no_config_base``); with none of those either, it is a usage error.
    """
    import os

    from keysetd.config import RGS_SOURCE_VARS, config_path, load_config, rgs_source_given

    path = config_path(args.config)
    if path is None and not rgs_source_given(os.environ):
        raise ConfigError(
            "no config given: use --config PATH or set KEYSETD_CONFIG"
            f" (or, open-rgs style, one of {', '.join(RGS_SOURCE_VARS)})"
        )
    from keysetd.strict import checked

    return checked(load_config(path))


def setup_logging(config: Config, args: argparse.Namespace) -> None:
    """``--log-format`` wins over the config's; the level is the config's."""
    from keysetd.log import configure

    configure(args.log_format or config.settings.log_format, config.settings.log_level)
