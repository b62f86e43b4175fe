"""Plug-ins: one module per paper idea (see :mod:`fgir.models.plugins.base`).

Importing this package imports every module in it, so each plug-in registers itself.
"""

import importlib
import pkgutil

from .base import (  # noqa: F401
    apply_plugins,
    get_inference,
    inference_names,
    mark_only_plugin_trainable,
    plugin_parameters,
    register_inference,
    register_plugin,
)

for _m in pkgutil.iter_modules(__path__):
    if _m.name != "base":
        importlib.import_module(f"{__name__}.{_m.name}")
