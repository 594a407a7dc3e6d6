"""What verifiers and signers get now: a pure function of (keyset, history, policy, now)."""

from __future__ import annotations

from dataclasses import dataclass

from keysetd.model import Keyset

__all__ = ["Plan", "plan"]


@dataclass(frozen=True, slots=True)
class Plan:
    """The keyset verifier outputs publish and the one signer outputs publish."""

    verifier: Keyset
    signer: Keyset
    fingerprint: str

    @property
    def active_kid(self) -> str | None:
        return self.signer.active_kid

    @property
    def published_kids(self) -> tuple[str, ...]:
        return tuple(k.kid for k in self.verifier.ordered())


def plan(keyset: Keyset) -> Plan:
    """Publish the source keyset as it is to both roles."""
    return Plan(verifier=keyset, signer=keyset, fingerprint=keyset.fingerprint())
