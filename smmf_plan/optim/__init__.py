"""The bundled optimizers."""

from .hfac import HFac
from .smmf import SMMF

__all__ = ["HFac", "SMMF"]
