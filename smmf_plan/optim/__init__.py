"""The bundled optimizers."""

from .smmf import SMMF

__all__ = ["SMMF"]
