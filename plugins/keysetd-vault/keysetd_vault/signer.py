"""The ``transit_signer`` output: which transit key version signers pass to ``transit/sign``.

Transit signs with the latest version unless told otherwise, and a version is
the latest the moment it is rotated, before any verifier has it. This output is
how keysetd's publish-before-use order reaches signers whose keys live in
transit: a small JSON file naming the mount, key and ``key_version`` of the kid
the planner activated (``activation_delay`` after verifiers got it; in fleet
mode, once every replica acknowledged it), with the ``transit/sign`` parameters
its JWS alg needs. It is a signer output (committed after the verifier outputs,
gated like any signer output) that holds no secret, so its default mode is 0644
and a public-only source can feed it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, ClassVar

from keysetd.plugin import (
    After,
    Keyset,
    Output,
    OutputConfig,
    OutputError,
    Role,
    SourceConfig,
    canonical_json,
)
from keysetd_vault.source import VaultTransitConfig, _kid_format, _mount, transit_version

__all__ = ["SIGN_PARAMETERS", "TransitSignerConfig", "TransitSignerOutput"]

#: JWS alg -> the ``transit/sign`` parameters whose signature is that alg's JWS signature
#: (ECDSA marshalled as JWS r||s; ed25519 and RSA return standard base64 of raw bytes).
SIGN_PARAMETERS: Mapping[str, Mapping[str, str]] = {
    "ES256": {"hash_algorithm": "sha2-256", "marshaling_algorithm": "jws"},
    "ES384": {"hash_algorithm": "sha2-384", "marshaling_algorithm": "jws"},
    "ES512": {"hash_algorithm": "sha2-512", "marshaling_algorithm": "jws"},
    "EdDSA": {},
    "RS256": {"hash_algorithm": "sha2-256", "signature_algorithm": "pkcs1v15"},
    "PS256": {"hash_algorithm": "sha2-256", "signature_algorithm": "pss", "salt_length": "hash"},
}


class TransitSignerConfig(OutputConfig):
    """``[[outputs]]`` with ``type = "transit_signer"``: mount and kid_format as the source's."""

    mount: Annotated[str, After(_mount)] = "transit"
    kid_format: Annotated[str, After(_kid_format)] = "{name}-v{version}"


class TransitSignerOutput(Output):
    """``{"alg", "key", "key_version", "kid", "mount", ...}``: the version signers sign with."""

    Config: ClassVar[type[OutputConfig]] = TransitSignerConfig

    def __init__(self, config: TransitSignerConfig) -> None:
        super().__init__(config)
        self.config: TransitSignerConfig = config

    @property
    def role(self) -> Role:
        return Role.SIGNER

    @property
    def private(self) -> bool:
        return False

    def check_source(self, source: SourceConfig) -> list[str]:
        if not isinstance(source, VaultTransitConfig):
            return [f"a transit_signer output needs a vault_transit source, not {source.type!r}"]
        problems = []
        kid_format = self.config.kid_format
        if "{name}" not in kid_format:
            problems.append("kid_format: must include {name}, the key signers call transit/sign on")
        elif any(
            transit_version(kid_format, kid_format.format(name=name, version=version))
            != (name, version)
            for name in source.keys
            for version in (1, 12, 123)
        ):
            problems.append(
                f"kid_format: {kid_format!r} does not tell key name and version apart"
                " (put a separator such as '-v' between them)"
            )
        for key in ("mount", "kid_format"):
            mine, theirs = getattr(self.config, key), getattr(source, key)
            if mine != theirs:
                problems.append(
                    f"{key}: {mine!r} differs from the source's {theirs!r}"
                    " (signers would sign with another key than verifiers get)"
                )
        return problems

    def render(self, keyset: Keyset) -> dict[Path, bytes]:
        path = self.config.path
        active = keyset.active
        if active is None:
            raise OutputError(self.name, str(path), "a signer output needs an active_kid")
        found = transit_version(self.config.kid_format, active.kid)
        if found is None:
            raise OutputError(
                self.name,
                str(path),
                f"active kid {active.kid!r} is not a kid_format {self.config.kid_format!r}"
                " makes from a transit key name and version",
            )
        parameters = SIGN_PARAMETERS.get(active.alg)
        if parameters is None:
            raise OutputError(
                self.name,
                str(path),
                f"active kid {active.kid!r} has alg {active.alg!r}, which transit cannot sign",
            )
        name, version = found
        document = {
            "alg": active.alg,
            "kid": active.kid,
            "mount": self.config.mount,
            "key": name,
            "key_version": version,
            **parameters,
        }
        return {path: canonical_json(document) + b"\n"}
