"""The ``command`` source: stdout of an external program (a KMS/HSM client wrapper).

The program runs without a shell, with a minimal environment, in its own
process group that is killed whole at the timeout or when its output grows
past ``max_output``. Its stderr reaches errors only redacted.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import ConfigDict, Field, field_validator

from keysetd import proc
from keysetd.errors import SourceError
from keysetd.model import Snapshot
from keysetd.plugin import Source, SourceConfig
from keysetd.sources.file import READ_LIMIT

__all__ = ["CommandSource", "CommandSourceConfig"]


class CommandSourceConfig(SourceConfig):
    # env values may be tokens: keep them out of validation errors.
    model_config = ConfigDict(hide_input_in_errors=True)

    argv: list[str]
    env: dict[str, str] = Field(default_factory=dict)
    max_output: int = Field(default=READ_LIMIT, gt=0)

    _argv = field_validator("argv")(proc.check_argv)
    _env = field_validator("env")(proc.check_env)


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
            )
        except proc.ProcFailure as exc:
            raise SourceError(self.describe(), exc.reason) from exc
        return Snapshot(data, origin=self.describe(), format=None)
