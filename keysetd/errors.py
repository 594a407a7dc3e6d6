"""The one exception tree of keysetd.

    KeysetdError
    ├── ConfigError     startup or reload; exit 2
    ├── PluginError     names the entry point (also a ConfigError)
    ├── SourceError     transient: keep last-known-good, back off
    ├── InvalidKeyset   .problems: tuple of Problem(kid, rule, detail); never key bytes
    ├── OutputError     names output and path
    ├── NotifyError     names the notifier; never rolls back outputs
    ├── StoreError      fleet store (etcd): names the endpoint and operation; never values
    └── SealError       encrypted state: names the file and the key provider; never key bytes

Messages name kids, rules, paths and plugins; they never carry key material.
Foreign errors are translated at the seam: ``raise SourceError(...) from exc``.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ConfigError",
    "InvalidKeyset",
    "KeysetdError",
    "NotifyError",
    "OutputError",
    "PluginError",
    "Problem",
    "SealError",
    "SourceError",
    "StoreError",
]


class KeysetdError(Exception):
    """Base of every error keysetd expects and handles."""


class ConfigError(KeysetdError):
    """The configuration is unusable; ``problems`` lists every finding."""

    def __init__(self, message: str, problems: tuple[str, ...] = ()) -> None:
        self.problems = problems or (message,)
        super().__init__(message if not problems else message + "\n  " + "\n  ".join(problems))


class PluginError(ConfigError):
    """A plugin could not be found, loaded or validated."""

    def __init__(self, group: str, name: str, reason: str) -> None:
        self.group = group
        self.name = name
        super().__init__(f"plugin {name!r} ({group}): {reason}")


class SourceError(KeysetdError):
    """The source could not deliver a snapshot; the last-known-good stays."""

    def __init__(self, source: str, reason: str) -> None:
        self.source = source
        self.reason = reason
        super().__init__(f"source {source}: {reason}")


@dataclass(frozen=True, slots=True)
class Problem:
    """One validation finding: which kid (or ``-``), which rule, and a key-free detail."""

    kid: str
    rule: str
    detail: str = ""

    def __str__(self) -> str:
        text = f"kid {self.kid!r}: {self.rule}"
        return f"{text}: {self.detail}" if self.detail else text


class InvalidKeyset(KeysetdError):
    """A keyset document broke one or more rules; it is rejected whole."""

    def __init__(self, problems: tuple[Problem, ...] | list[Problem], where: str = "") -> None:
        self.problems = tuple(problems)
        self.where = where
        head = f"invalid keyset{f' from {where}' if where else ''}"
        super().__init__(head + ": " + "; ".join(str(p) for p in self.problems))

    @property
    def rules(self) -> frozenset[str]:
        return frozenset(p.rule for p in self.problems)

    def located(self, where: str) -> InvalidKeyset:
        """The same problems, naming where the document came from."""
        return InvalidKeyset(self.problems, where)


class OutputError(KeysetdError):
    """An output could not be rendered or written."""

    def __init__(self, output: str, path: str, reason: str) -> None:
        self.output = output
        self.path = path
        super().__init__(f"output {output} ({path}): {reason}")


class NotifyError(KeysetdError):
    """A notifier failed; outputs stay as committed."""

    def __init__(self, notifier: str, reason: str) -> None:
        self.notifier = notifier
        super().__init__(f"notifier {notifier}: {reason}")


class StoreError(KeysetdError):
    """The fleet store (etcd) did not answer or refused; callers keep last-known-good."""

    def __init__(self, operation: str, endpoint: str, reason: str) -> None:
        self.operation = operation
        self.endpoint = endpoint
        self.reason = reason
        super().__init__(f"etcd {operation} ({endpoint}): {reason}")


class SealError(KeysetdError):
    """An encrypted state file could not be sealed or opened (key provider down, wrong key,
    corrupt or swapped file). Names what and where; never a data key or what it protects."""

    def __init__(self, where: str, reason: str) -> None:
        self.where = where
        self.reason = reason
        super().__init__(f"encrypted state {where}: {reason}")
