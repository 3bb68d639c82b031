"""tlkit: transfer learning for PyTorch Lightning."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["TransferDataModule", "TransferModule", "__version__"]

if TYPE_CHECKING:
    from tlkit.data import TransferDataModule
    from tlkit.module import TransferModule


def __getattr__(name: str) -> Any:
    # Imported on first use, so `tlkit --help` and `tlkit recipes` start without torch.
    if name == "TransferModule":
        from tlkit.module import TransferModule

        return TransferModule
    if name == "TransferDataModule":
        from tlkit.data import TransferDataModule

        return TransferDataModule
    raise AttributeError(f"module 'tlkit' has no attribute {name!r}")
