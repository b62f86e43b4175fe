"""Shims for what earlier fgir versions wrote (design.md §10: renames go through shims, not copies).

fgir <= 0.1 (checkpoint schema 1) had fixed ``task.cal`` / ``task.tgda`` config sections; they are
rewritten into the plug-in layout when a config or checkpoint of that version is read.
"""

from __future__ import annotations

_LEGACY_CAL_HEAD = ("num_maps", "center_beta", "logit_scale", "pam_sampling", "with_replacement")
_LEGACY_CAL_VIEWS = ("crop_threshold", "drop_threshold", "crop_padding")
_LEGACY_TGDA_VIEWS = _LEGACY_CAL_VIEWS + ("mix_threshold", "mix_padding", "pam_sampling", "with_replacement")


def migrate_config(data: dict) -> dict:
    """Shim for configs of fgir <= 0.1 (checkpoint schema 1), which had fixed ``task.cal`` and
    ``task.tgda`` sections: the CAL head becomes the ``cal`` entry of ``model.plugins``, the task's
    own fields move up under ``task``, ``task.cal.tta_eval`` becomes ``model.inference: tta``.
    Configs without those sections are returned unchanged."""
    task = data.get("task")
    if not isinstance(task, dict) or not any(isinstance(task.get(k), dict) for k in ("cal", "tgda")):
        return data
    out = {**data, "model": dict(data.get("model") or {})}
    task = dict(task)
    cal, tgda = task.pop("cal", None) or {}, task.pop("tgda", None) or {}
    name = task.get("name", "classification")
    if name == "cal":
        head = {k: cal[k] for k in _LEGACY_CAL_HEAD if k in cal}
        out["model"]["plugins"] = [{"name": "cal", **head}] + list(out["model"].get("plugins") or [])
        task.update({k: cal[k] for k in _LEGACY_CAL_VIEWS if k in cal})
        if cal.get("tta_eval"):
            out["model"]["inference"] = "tta"
    elif name == "tgda":
        task.update({k: cal[k] for k in _LEGACY_TGDA_VIEWS if k in cal})
        task.update(tgda)
    out["task"] = task
    return out
