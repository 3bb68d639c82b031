"""tlkit: transfer learning for PyTorch Lightning."""

from tlkit.data import TransferDataModule
from tlkit.module import TransferModule

__version__ = "0.1.0"
__all__ = ["TransferDataModule", "TransferModule", "__version__"]
