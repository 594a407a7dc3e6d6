"""Command line: parse, call, map errors to exit codes (0 ok, 1 runtime failure, 2 usage/config).

The commands live by stage, each importing what it needs only when it runs:
keyset_commands (validate, verify, keygen: no config), daemon_commands (run, once),
config_commands (check-config, plugins), state_commands (status, plan, evidence),
revocation_commands (revoke, unrevoke, forget, audit), rotate_command (rotate),
seal_commands (state rewrap).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from keysetd.cli.config_commands import cmd_check_config, cmd_plugins
from keysetd.cli.daemon_commands import cmd_once, cmd_run
from keysetd.cli.exits import EXIT_FAILED, EXIT_USAGE
from keysetd.cli.keyset_commands import cmd_keygen, cmd_validate, cmd_verify
from keysetd.cli.revocation_commands import cmd_audit, cmd_forget, cmd_revoke, cmd_unrevoke
from keysetd.cli.rotate_command import cmd_rotate
from keysetd.cli.seal_commands import cmd_state
from keysetd.cli.state_commands import cmd_evidence, cmd_plan, cmd_status
from keysetd.errors import ConfigError, KeysetdError
from keysetd.extras import DAEMON_MODULES, missing_daemon_module

__all__ = ["DAEMON_MODULES", "main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="keysetd",
        description="Keep JWT keysets where their consumers read them; rotate without downtime.",
        epilog="Exit codes: 0 success, 1 runtime failure, 2 usage or configuration error.",
    )
    parser.add_argument("--log-format", choices=["json", "text"], default=None)
    parser.add_argument(
        "--version", action=_Version, nargs=0, help="print the installed version and exit"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        name: str,
        func: Callable[[argparse.Namespace], int],
        help_text: str,
        *,
        needs_config: bool = True,
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        if needs_config:
            p.add_argument("--config", "-c", help="config file (default: $KEYSETD_CONFIG)")
        p.set_defaults(func=func)
        return p

    command("run", cmd_run, "run the daemon")
    command("once", cmd_once, "run one cycle; exit 0 if outputs are current, 1 if it failed")
    v = command("validate", cmd_validate, "check a keyset document", needs_config=False)
    v.add_argument("file", nargs="?", help="keyset file, or - for stdin (default)")
    v.add_argument("--format", default="auto", choices=["auto", "jwks", "rgs", "pem"])
    v.add_argument("--hmac-alg", default="HS256", choices=["HS256", "HS384", "HS512"])
    v.add_argument("--public", action="store_true", help="refuse private members")
    command("check-config", cmd_check_config, "check the config; exit 2 on violations")
    s = command("status", cmd_status, "what the daemon publishes now")
    s.add_argument("--json", action="store_true")
    command("plugins", cmd_plugins, "list sources, outputs and notifiers", needs_config=False)
    pl = command("plan", cmd_plan, "what the next cycle would publish, and why")
    pl.add_argument("--json", action="store_true", help="the plan as one JSON object")
    r = command("revoke", cmd_revoke, "break-glass: remove a kid from every output now")
    r.add_argument("kid")
    r.add_argument("--reason", default="break-glass")
    u = command("unrevoke", cmd_unrevoke, "lift a revocation so the source may bring the kid back")
    u.add_argument("kid")
    f = command("forget", cmd_forget, "drop a kid's record so the source may reuse it (kid-reused)")
    f.add_argument("kid")
    e = command("evidence", cmd_evidence, "write rotation evidence for an auditor")
    e.add_argument("--event-id", help="default: $RGS_KEYSET_EVENT_ID, else keyset-<UTC time>")
    e.add_argument(
        "--previous-summary",
        help="summary.json of the previous event (default: $RGS_KEYSET_PREVIOUS_SUMMARY_FILE)",
    )
    e.add_argument(
        "--workdir", help="evidence goes to WORKDIR/EVENT_ID/ (default: $RGS_KEYSET_WORKDIR or .)"
    )
    _audit_and_state(command)
    rot = command(
        "rotate",
        cmd_rotate,
        "add a new key to a file source (or a transit key version) and make it active",
    )
    rot.add_argument("--alg", choices=["ES256", "ES384", "ES512", "EdDSA", "RS256", "PS256"])
    rot.add_argument("--kid")
    k = command("keygen", cmd_keygen, "print a new private JWK", needs_config=False)
    k.add_argument(
        "--alg",
        default="ES256",
        choices=["ES256", "ES384", "ES512", "EdDSA", "RS256", "PS256", "HS256", "HS384", "HS512"],
    )
    k.add_argument("--kid")
    ver = command(
        "verify", cmd_verify, "verify a JWT against a keyset file and say why", needs_config=False
    )
    ver.add_argument("jwt", metavar="TOKEN", help="the JWT, or - to read it from stdin")
    ver.add_argument("--jwks", required=True, help="a jwks, keyset or rgs file")
    ver.add_argument(
        "--alg",
        action="append",
        help="an alg tokens may use (repeat; default: every alg keysetd knows)",
        choices=[
            *("ES256", "ES384", "ES512", "EdDSA", "RS256", "RS384", "RS512"),
            *("PS256", "PS384", "PS512", "HS256", "HS384", "HS512"),
        ],
    )
    ver.add_argument("--audience", help="required aud (default: aud is not checked)")
    ver.add_argument("--issuer", help="required iss")
    ver.add_argument("--leeway", type=float, default=0.0, help="seconds of clock skew allowed")
    ver.add_argument("--hmac-alg", default="HS256", choices=["HS256", "HS384", "HS512"])
    return parser


def _audit_and_state(command: Callable[..., argparse.ArgumentParser]) -> None:
    """``audit verify|export`` and ``state rewrap``: what state_dir keeps, checked or re-sealed."""
    a = command("audit", cmd_audit, "check the audit log's chain, or export it as JSON lines")
    a.add_argument("action", choices=["verify", "export"])
    a.add_argument(
        "--from", dest="from_seq", type=int, default=1, metavar="SEQ", help="export from SEQ on"
    )
    st = command("state", cmd_state, "re-seal encrypted state under the current key version")
    st.add_argument("action", choices=["rewrap"])
    st.add_argument(
        "--from-config",
        metavar="OLD",
        help="a config whose [state] provider sealed the files now (a move between providers)",
    )


class _Version(argparse.Action):
    """``keysetd --version``: the installed distribution's version, looked up only when asked.

    importlib.metadata is loaded here and nowhere on the way to a command, so ``--help`` and
    ``run`` stay as light as before; it is the standard library, so a verifier-only install
    (cryptography and PyJWT) answers too.
    """

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        print(f"keysetd {installed_version()}")
        parser.exit()


def installed_version() -> str:
    """The version of the installed ``keysetd`` distribution (the package's own if none is)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("keysetd")
    except PackageNotFoundError:  # run from a source tree that was never installed
        from keysetd import __version__

        return __version__


def _needs_the_daemon_extra(command: str, module: str) -> int:
    print(
        f"keysetd: {command} needs the daemon's dependencies ({module} is missing):"
        " pip install 'keysetd[daemon]'",
        file=sys.stderr,
    )
    return EXIT_USAGE


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if missing := missing_daemon_module(args.command):
        return _needs_the_daemon_extra(args.command, missing)
    try:
        code: int = args.func(args)
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in DAEMON_MODULES:
            raise
        return _needs_the_daemon_extra(args.command, exc.name or "?")
    except ConfigError as exc:
        print(f"keysetd: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeysetdError as exc:
        print(f"keysetd: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except BrokenPipeError:
        return _reader_went_away()
    try:
        sys.stdout.flush()  # what is still buffered meets the closed pipe here
    except BrokenPipeError:
        return _reader_went_away()
    return code


def _reader_went_away() -> int:
    """``keysetd status | head``: the reader closed the pipe; stop quietly, as cat does.

    stdout is pointed at /dev/null so the interpreter's own flush at exit raises nothing.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_FAILED
