"""Plug-in ``token_reduction``: eight token-reduction methods on any timm ViT (and ViTFS).

Methods (spec ``clca.md`` §5; paper arXiv 2501.00243 compares them): EViT (arXiv 2202.07800),
Top-K, DynamicViT (arXiv 2106.02034), ATS (arXiv 2111.15667), ToMe (arXiv 2210.09461), SiT
(arXiv 2111.12624), PatchMerger (arXiv 2202.12015) and DPC-KNN (arXiv 2204.08680).

```yaml
model:
  name: vit_base_patch16_clip_224
  img_size: 448
  plugins:
    - {name: token_reduction, method: evit, keep_rate: 0.1, locations: [3, 6, 9]}
    - {name: clca}
```

``keep_rate`` is a float ``kr`` or a list with exactly one value per entry of ``locations``, each in
(0, 1] (spec §5). A float is expanded per method (spec §6, :func:`~.core.expand_keep_rate`): the
relative rules (EViT / Top-K: keep ``ceil(kr_s * (n - 1))`` of the current tokens; DynamicViT's
faithful CLC rule ``int((S - 1) * kr_s)``) use ``kr_s = kr`` at every location, the absolute rules
(DynamicViT base rule and ratio-loss targets, ATS, SiT, PatchMerger, DPC-KNN, ToMe's ``t_s``) use
the cumulative fraction ``kr ** (s + 1)`` at stage ``s``. A list gives those per-location values
directly: entry ``s`` replaces ``kr`` (relative rules) or ``kr ** (s + 1)`` (absolute rules). So
``[0.5, 0.25, 0.125]`` equals ``0.5`` for the absolute methods and ``[0.5, 0.5, 0.5]`` equals ``0.5``
for EViT / Top-K; for the absolute methods (DynamicViT included) a list must be non-increasing (a
target cannot grow). DynamicViT reads the same entry in both of its rules, so with CLCA in faithful
mode (the relative CLC rule) ``[0.5, 0.25, 0.125]`` means 0.5, 0.25, 0.125 of the current tokens,
not the scalar 0.5's 0.5 at every location.

```yaml
    - {name: token_reduction, method: evit, keep_rate: [0.7, 0.5, 0.3], locations: [3, 6, 9]}
```

``keep_rate: 1.0`` (or a list of 1.0 only) disables the reducer for every method (framework rule,
spec §15 item 12): the model is then exactly the plain backbone. ``mode: faithful`` (default) uses
the reference keep-count rules (which can keep 0 tokens, ATS's K-1/K quantiles, DynamicViT's
relative CLC rule); ``mode: fixed`` clamps absolute targets to >= 1, uses K ATS quantiles, the base
DynamicViT rule and ones for DynamicViT cache decisions in eval.
"""

from __future__ import annotations

import types
import warnings
from dataclasses import dataclass, field

import torch.nn as nn

from ....config import Config, ConfigError, PluginConfig, check_choice
from ..base import register_plugin
from .core import ABSOLUTE, is_disabled
from .methods import REDUCERS, DynamicViT
from .path import check_locations, ensure_token_path

__all__ = ["TokenReductionConfig", "apply_token_reduction", "build_reducer", "METHODS"]

METHODS = tuple(REDUCERS)


@dataclass
class TokenReductionConfig(PluginConfig):
    """Token reduction in a timm ViT: EViT, Top-K, ToMe, DynamicViT, ATS, SiT, PatchMerger, DPC-KNN (clca.md §5)."""

    name: str = "token_reduction"
    method: str = "evit"
    """Reduction method: evit, topk, tome, dynamicvit, ats, sit, patchmerger or dpcknn."""
    keep_rate: float | list = 0.5
    """Keep rate kr in (0, 1], expanded per method (spec §6: kr per location for EViT/Top-K, kr**(s+1) for the absolute rules), or a list with one value per location that replaces them (non-increasing for the absolute methods); 1.0 (or all 1.0) disables the reducer."""  # noqa: E501
    locations: list = field(default_factory=lambda: [3, 6, 9])
    """Reduction blocks (0-indexed, sorted, at most depth-2); reference [3, 6, 9]."""
    mode: str = "faithful"
    """faithful (default: reference keep rules, the paper's token tables) or fixed (targets >= 1, K ATS points)."""
    ratio_weight: float = 2.0
    """DynamicViT: weight of the keep-ratio loss (loss_dynvit_ratio, added by the classification task)."""
    k_neighbors: int = 5
    """DPC-KNN: neighbours of the density estimate."""
    equal_weight: bool = False
    """DPC-KNN: merge clusters with equal token weights instead of exp(Linear(x))."""
    record: bool = False
    """Keep per-location token assignment maps of the last forward (for `fgir viz tokens`)."""

    def validate(self, cfg: Config, key: str) -> None:
        check_choice(f"{key}.method", self.method, list(METHODS))
        check_choice(f"{key}.mode", self.mode, ["faithful", "fixed"])
        locs = list(self.locations)
        if not locs or locs != sorted(set(locs)) or min(locs) < 0:
            raise ConfigError(f"{key}.locations must be a non-empty sorted list of unique block indices >= 0, "
                              f"got {self.locations}.")
        self.keep_rate = _check_keep_rate(f"{key}.keep_rate", self.keep_rate, self.method, locs)
        if self.k_neighbors < 1:
            raise ConfigError(f"{key}.k_neighbors must be >= 1, got {self.k_neighbors}.")


def _check_keep_rate(key: str, value, method: str, locs: list) -> float | list[float]:
    """``keep_rate``: a number in (0, 1] or one per location, each in (0, 1] (non-increasing for the
    absolute methods); returns it as a float or a list of floats, ConfigError naming ``key`` otherwise."""
    if not isinstance(value, (list, tuple)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
            raise ConfigError(f"{key}={value!r} is not allowed; expected a number in (0, 1] or a list of "
                              f"{len(locs)} numbers in (0, 1], one per location {locs}.")
        return float(value)
    if len(value) != len(locs) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                          and 0 < v <= 1 for v in value):
        raise ConfigError(f"{key}={list(value)!r} is not allowed; expected a number in (0, 1] or a list of "
                          f"{len(locs)} numbers in (0, 1], one per location {locs}.")
    vals = [float(v) for v in value]
    if method in ABSOLUTE and any(b > a for a, b in zip(vals, vals[1:])):
        raise ConfigError(f"{key}={vals!r} is not allowed; method '{method}' uses absolute per-location targets "
                          "(entry s replaces kr**(s+1)), so the list must be non-increasing.")
    return vals


def _num_patches(model: nn.Module) -> int:
    pe = model.patch_embed
    n = getattr(pe, "num_patches", None)
    if n is None and hasattr(pe, "grid_size"):
        n = int(pe.grid_size[0] * pe.grid_size[1])
    if n is None:
        raise TypeError(f"token_reduction: cannot read the patch count of {type(pe).__name__}.")
    return int(n)


def build_reducer(model: nn.Module, cfg: TokenReductionConfig):
    """The :class:`~.path.Reducer` for ``cfg`` on ``model`` (None when keep_rate is 1.0 or all 1.0)."""
    if is_disabled(cfg.keep_rate):
        return None
    cls = REDUCERS[cfg.method]
    fixed = cfg.mode == "fixed"
    locs, dim = list(cfg.locations), model.embed_dim
    if cls is DynamicViT:
        return cls(locs, cfg.keep_rate, fixed, dim, cfg.ratio_weight)
    if cfg.method in ("sit", "patchmerger"):
        return cls(locs, cfg.keep_rate, fixed, dim, _num_patches(model))
    if cfg.method == "dpcknn":
        return cls(locs, cfg.keep_rate, fixed, dim, cfg.k_neighbors, cfg.equal_weight)
    return cls(locs, cfg.keep_rate, fixed)


def _aux_losses(self: nn.Module) -> dict:
    """Named auxiliary losses of the last forward (``fgir_aux_losses`` hook read by the classification task)."""
    red, path = self.token_path.reducer, self.token_path
    if isinstance(red, DynamicViT) and self.training and path.last_decisions:
        return {"loss_dynvit_ratio": red.ratio_loss(path.last_decisions)}
    return {}


@register_plugin("token_reduction", TokenReductionConfig, families=("vit",))
def apply_token_reduction(model: nn.Module, cfg: TokenReductionConfig) -> nn.Module:
    """Attach ``cfg.method`` at ``cfg.locations`` of ``model`` (a timm ViT); returns the same model."""
    path = ensure_token_path(model, "token_reduction")
    locs = check_locations(list(cfg.locations), len(model.blocks), "token_reduction")
    if path.reducer is not None:
        raise ValueError("token_reduction is already applied to this model; list it once in model.plugins.")
    if path.locations is not None and path.locations != locs:
        raise ValueError(f"token_reduction locations {locs} differ from the clca group boundaries "
                         f"{path.locations}; apply token_reduction first or give both the same locations.")
    reducer = build_reducer(model, cfg)
    if reducer is None:
        kr = list(cfg.keep_rate) if isinstance(cfg.keep_rate, (list, tuple)) else float(cfg.keep_rate)
        warnings.warn(f"token_reduction with keep_rate={kr} is disabled (framework rule): the model "
                      "runs without token reduction.", stacklevel=2)
    if reducer is not None:
        reducer.train(model.training)
    path.locations = locs
    path.reducer = reducer
    path.record = bool(cfg.record)
    if isinstance(reducer, DynamicViT):
        model.fgir_aux_losses = types.MethodType(_aux_losses, model)
    return model
