"""keysetd: keep JWT keysets where their consumers read them, and rotate them without downtime."""

__version__ = "0.1.0"
__all__ = ["__version__"]
