"""The ``command`` source: stdout of an external program (a KMS/HSM client wrapper).

The program runs without a shell, with a minimal environment, in its own
process group that is killed whole at the timeout or when its output grows
past ``max_output``, or when keysetd gets SIGTERM (:mod:`keysetd.cancel`).
Its stderr reaches errors only redacted.

A shell line (open-rgs's ``RGS_JWT_KEYSET_COMMAND``) is the argv
``["/bin/sh", "-c", LINE]``: the shell is the program, with the same minimal
environment. Strict mode's absolute-program rule then applies to every command
in the line (``shell_line_problems``).
"""

from __future__ import annotations

import os
import re
import shlex
from typing import Annotated, ClassVar

from pydantic import Field

from keysetd import proc
from keysetd.errors import SourceError
from keysetd.extension import Source, SourceConfig
from keysetd.model import Snapshot
from keysetd.sources.file import READ_LIMIT
from keysetd.tables import After, positive

__all__ = ["CommandSource", "CommandSourceConfig", "shell_line_problems"]

#: Programs that run their ``-c`` argument as a shell line.
_SHELLS = frozenset({"sh", "bash", "dash", "ash", "ksh", "mksh", "zsh", "busybox"})
#: POSIX shell builtins that run no other program: no PATH lookup to hijack (``exec``,
#: ``command`` and ``eval`` run one, so they are not here).
_BUILTINS = frozenset(
    {":", "[", "test", "true", "false", "echo", "printf", "exit", "set", "cd", "umask"}
    | {"export", "unset", "read"}
)
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=.*", re.DOTALL)
_OPERATOR_CHARS = "();<>|&\n"


def _shell_line(argv: list[str]) -> str | None:
    """The line of ``[<shell>, -c, LINE, ...]`` (``-c`` alone or in a group like ``-lc``)."""
    if len(argv) < 3 or os.path.basename(argv[0]) not in _SHELLS:
        return None
    flags = argv[1]
    if flags.startswith("-") and not flags.startswith("--") and "c" in flags:
        return argv[2]
    return None


def _program_words(line: str) -> list[str]:
    """The words of ``line`` in command position: first, and after ``| || && ; & ( newline``.

    Leading ``NAME=value`` assignments are skipped, a redirection's target is not a
    command. Conservative: a quoted ``|`` counts as an operator, so a false alarm is
    possible and a missed program is not. ValueError for an unclosed quote.
    """
    lexer = shlex.shlex(line, posix=True, punctuation_chars=_OPERATOR_CHARS)
    lexer.whitespace, lexer.whitespace_split, lexer.commenters = " \t\r", True, ""
    found: list[str] = []
    expect_program, skip_next = True, False
    for token in lexer:
        if token and all(char in _OPERATOR_CHARS for char in token):
            if "(" in token:  # a subshell, or bash's <(...) process substitution
                expect_program = True
            elif token[0] in "<>" or token.startswith("&>"):
                skip_next = True  # a redirection: its target follows
            elif any(char in "|&;\n" for char in token):
                expect_program = True
            continue
        if skip_next:
            skip_next = False
        elif expect_program and not _ASSIGNMENT.fullmatch(token):
            found.append(token)
            expect_program = False
    return found


def shell_line_problems(argv: list[str]) -> list[str]:
    """Strict mode on a shell line: every program in it must be an absolute path.

    Builtins that run no program (``[``, ``test``, ``echo``, ``printf``, ``exit`` ...) are
    allowed.
    What a relative ``argv[0]`` is refused for (a PATH lookup) applies to each command
    of ``sh -c LINE``; command substitution and ``eval``-like tricks hide programs, so
    ``$(...)`` and backticks are refused outright. Empty for an argv that is no shell line.
    """
    line = _shell_line(argv)
    if line is None:
        return []
    if "`" in line or "$(" in line:
        return ["the shell line uses command substitution ($(...) or backticks)"]
    try:
        words = _program_words(line)
    except ValueError:
        return ["the shell line cannot be checked (an unclosed quote)"]
    if not words:
        return ["the shell line runs no program"]
    return [
        f"{word[:40]!r} in the shell line is not an absolute path (PATH can be hijacked)"
        for word in words
        if not os.path.isabs(word) and word not in _BUILTINS
    ]


class CommandSourceConfig(SourceConfig):
    argv: Annotated[list[str], After(proc.check_argv)]
    env: Annotated[dict[str, str], After(proc.check_env)] = Field(default_factory=dict)
    max_output: Annotated[int, positive] = READ_LIMIT


class CommandSource(Source):
    """Runs ``argv`` once per fetch; its stdout is the snapshot."""

    Config: ClassVar[type[SourceConfig]] = CommandSourceConfig

    def __init__(self, config: CommandSourceConfig) -> None:
        super().__init__(config)
        self.config: CommandSourceConfig = config

    def describe(self) -> str:
        return f"command:{self.config.argv[0]}"

    def fetch(self) -> Snapshot:
        try:
            data = proc.run(
                self.config.argv,
                env=proc.minimal_env(self.config.env),
                timeout=self.config.timeout,
                max_stdout=self.config.max_output,
                cancellable=True,
            )
        except proc.ProcFailure as exc:
            raise SourceError(self.describe(), exc.reason) from exc
        return Snapshot(data, origin=self.describe(), format=None)
