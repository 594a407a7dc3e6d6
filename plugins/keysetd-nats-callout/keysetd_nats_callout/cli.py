"""``keysetd-nats-callout [run|check-config] --config C``: exit 0, 1 (runtime), 2 (config)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from keysetd.plugin import ConfigError, configure_logging, event
from keysetd_nats_callout.config import load_config, read_password, read_signer, read_xkey
from keysetd_nats_callout.service import CalloutError, serve

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="keysetd-nats-callout",
        description="NATS auth callout: verify clients' JWTs against keysetd's jwks",
    )
    parser.add_argument(
        "command", nargs="?", default="run", choices=("run", "check-config"), help="default: run"
    )
    parser.add_argument(
        "-c",
        "--config",
        type=Path,
        default=os.environ.get("KEYSETD_NATS_CALLOUT_CONFIG"),
        help="TOML config (also KEYSETD_NATS_CALLOUT_CONFIG)",
    )
    parser.add_argument("--log-format", choices=("json", "text"), help="overrides log_format")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.config is None:
        print("keysetd-nats-callout: --config is required", file=sys.stderr)
        return 2
    try:
        config = load_config(args.config)
        configure_logging(args.log_format or config.log_format)
        signer = read_signer(config)
        xkey = read_xkey(config)
        read_password(config)
    except ConfigError as exc:
        print(f"keysetd-nats-callout: {exc}", file=sys.stderr)
        return 2
    if args.command == "check-config":
        encryption = f"xkey {xkey.public_key}" if xkey else "plain (no xkey)"
        print(
            f"config ok: issuer account {signer.public_key}, target account {config.account},"
            f" requests {encryption}"
        )
        return 0
    try:
        asyncio.run(serve(config))
    except ConfigError as exc:
        print(f"keysetd-nats-callout: {exc}", file=sys.stderr)
        return 2
    except CalloutError as exc:
        event("callout_failed", logging.ERROR, error=str(exc))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
