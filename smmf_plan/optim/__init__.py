"""The bundled optimizers."""
