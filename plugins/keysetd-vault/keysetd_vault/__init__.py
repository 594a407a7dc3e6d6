"""keysetd source plugin for Vault/OpenBao transit: ``type = "vault_transit"``."""

from __future__ import annotations

from keysetd_vault.source import VaultTransitConfig, VaultTransitSource

__all__ = ["VaultTransitConfig", "VaultTransitSource"]
