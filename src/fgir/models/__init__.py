"""Models: the factory, fgir backbones, heads and per-paper plug-ins."""

from .factory import create_model, model_names, register_model

__all__ = ["create_model", "model_names", "register_model"]
