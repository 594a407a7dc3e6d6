"""The ``command`` source: stdout of an external program (a KMS/HSM client wrapper).

The program runs without a shell, with a minimal environment, in its own
process group that is killed whole at the timeout or when its output grows
past ``max_output``, or when keysetd gets SIGTERM (:mod:`keysetd.cancel`).
Its stderr reaches errors only redacted.
"""

from __future__ import annotations

from dataclasses import field
from typing import Annotated, ClassVar

from keysetd import proc
from keysetd.errors import SourceError
from keysetd.extension import Source, SourceConfig
from keysetd.model import Snapshot
from keysetd.schema import positive
from keysetd.sources.file import READ_LIMIT

__all__ = ["CommandSource", "CommandSourceConfig"]


class CommandSourceConfig(SourceConfig):
    argv: Annotated[list[str], proc.check_argv]
    env: Annotated[dict[str, str], proc.check_env] = field(default_factory=dict)
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
