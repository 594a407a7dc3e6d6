"""keysetd plugin for Vault/OpenBao transit: ``type = "vault_transit"`` (source) and
``type = "transit_signer"`` (the output naming the key version signers use)."""

from __future__ import annotations

from keysetd_vault.signer import TransitSignerConfig, TransitSignerOutput
from keysetd_vault.source import VaultTransitConfig, VaultTransitSource

__all__ = ["TransitSignerConfig", "TransitSignerOutput", "VaultTransitConfig", "VaultTransitSource"]
