"""Export forms: which module of a deployed model goes into an exported graph.

A deployed model is exported through its *export form*, an ``nn.Module`` that maps a batch of
normalised images (``B x 3 x S x S``) to logits with a static graph. By default that is the model
itself (``forward``, the ``default`` inference variant). A plug-in whose training or inference
path is not traceable as is (dynamic token counts, data-dependent crops, adapters to merge)
declares an inference form for export in one of two ways:

* ``register_export_form(model, "export_module", variant="token_reduction:static")`` on the
  model its ``apply_<name>`` returns (stored by method name, so copies resolve their own), or
* an ``export_module(self) -> nn.Module`` method on the plug-in's wrapper class, with an optional
  ``export_variant`` string attribute on the returned module.

The method returns the module to trace (for example a copy with static keep counts, the
no-crop or batched-crop GLSim path, or adapters merged into the weights); the variant name is
recorded in the exported file and printed by ``fgir export``. A registered inference variant
(:func:`fgir.models.plugins.register_inference`) can be exported too when it is traceable.

Two optional attributes of any sub-module take part as well (so they compose when plug-ins are
stacked or wrapped):

* ``export_unsupported``: a string (or a method returning one, or None) saying why the module
  has no static graph (e.g. ATS keeps a data-dependent number of tokens); :func:`export_form`
  refuses such a model with that reason.
* ``export_note()``: a short description of what the traced graph fixes (e.g. the static token
  counts per block of a token-reduction model), read after a reference forward and appended to
  the variant name.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

__all__ = ["ExportForm", "export_form", "export_blockers", "export_notes", "register_export_form"]


@dataclass(frozen=True)
class ExportForm:
    """The module to export and the name of the inference variant it computes."""

    module: nn.Module
    variant: str


class _Variant(nn.Module):
    """``getattr(model, method)(x)`` as a module (an inference variant such as CAL's ``tta``)."""

    def __init__(self, model: nn.Module, method: str):
        super().__init__()
        self.model, self.method = model, method

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self.model, self.method)(x)


class _Flip(nn.Module):
    """The ``flip`` inference variant of ``inner`` as a module (traceable: ``torch.flip``)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from ..models.plugins.base import flip_average

        return flip_average(self.inner, x)


def register_export_form(model: nn.Module, method: str, variant: str) -> None:
    """Declare ``getattr(model, method)() -> nn.Module`` as the module to export, computing
    inference variant ``variant`` (a name shown in the export report and metadata)."""
    if not callable(getattr(model, method, None)):
        raise TypeError(f"{type(model).__name__} has no method '{method}' for the export form '{variant}'.")
    if not variant:
        raise ValueError("register_export_form needs a non-empty variant name.")
    model.fgir_export = {"method": method, "variant": variant}


def _hook(model: nn.Module) -> tuple[nn.Module, str] | None:
    reg = getattr(model, "fgir_export", None)
    if isinstance(reg, dict) and reg.get("method"):
        mod = getattr(model, reg["method"])()
        return mod, str(reg.get("variant") or reg["method"])
    fn = getattr(type(model), "export_module", None)
    if callable(fn):
        mod = model.export_module()
        return mod, str(getattr(mod, "export_variant", "") or f"{type(model).__name__}.export_module")
    return None


def export_blockers(module: nn.Module) -> list[str]:
    """The distinct ``export_unsupported`` reasons of ``module`` and its sub-modules (empty: exportable)."""
    reasons: list[str] = []
    for m in module.modules():
        r = getattr(m, "export_unsupported", None)
        r = r() if callable(r) else r
        if r and r not in reasons:
            reasons.append(str(r))
    return reasons


def export_notes(module: nn.Module) -> list[str]:
    """The ``export_note()`` texts of ``module`` and its sub-modules (call after a forward)."""
    notes: list[str] = []
    for m in module.modules():
        fn = getattr(m, "export_note", None)
        n = fn() if callable(fn) else None
        if n and n not in notes:
            notes.append(str(n))
    return notes


def _refuse_blocked(module: nn.Module, variant: str) -> None:
    reasons = export_blockers(module)
    if reasons:
        raise ValueError(f"this model cannot be exported to a static graph ({variant}): {'; '.join(reasons)}.")


def export_form(model: nn.Module, inference: str = "default") -> ExportForm:
    """The export form of ``model`` for inference variant ``inference``.

    ``default``: the plug-in's declared export form when there is one, else ``model.forward``.
    Another name: that registered inference variant (it must be traceable).

    Raises:
        ValueError: ``inference`` is not a variant of the model, or a sub-module of the form
            declares ``export_unsupported``.
        TypeError: a declared export form did not return an ``nn.Module``.
    """
    from ..models.plugins import get_inference
    from ..models.plugins.base import split_flip

    base, flip = split_flip(inference)
    if flip:
        inner = export_form(model, base)
        return ExportForm(_Flip(inner.module).eval(), f"{inference} (mean over the image and its flip; "
                                                      f"{inner.variant})")
    if inference in ("", "default"):
        hooked = _hook(model)
        if hooked is None:
            _refuse_blocked(model, "default (forward)")
            return ExportForm(model, "default (forward)")
        mod, variant = hooked
        if not isinstance(mod, nn.Module):
            raise TypeError(f"the export form '{variant}' of {type(model).__name__} returned "
                            f"{type(mod).__name__}, expected an nn.Module.")
        _refuse_blocked(mod, variant)
        return ExportForm(mod.eval(), variant)
    get_inference(model, inference)  # raises listing the available variants
    form = _Variant(model, model.fgir_inference[inference]).eval()
    _refuse_blocked(form, inference)
    return ExportForm(form, inference)
