"""Token reduction for timm ViTs: the shared token path, eight methods and the ``token_reduction`` plug-in.

Modules: :mod:`.core` (pure functions: keep rules, EViT, ToMe matching, ATS sampling, ...),
:mod:`.path` (the block loop shared with CLCA), :mod:`.methods` (reducer modules) and
:mod:`.plugin` (config + ``apply_token_reduction``, registered as ``token_reduction``).
"""

from . import core, methods, path, plugin, viz  # noqa: F401  (plugin and viz register themselves)
from .plugin import METHODS, TokenReductionConfig, apply_token_reduction  # noqa: F401
