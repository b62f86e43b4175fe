"""Tiny fgir checkpoints of every exportable model family, written without training (helpers for
tests/export; not a conftest so that `from conftest import ...` elsewhere keeps meaning tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import torch

FAMILIES = {
    "lrnet": ("lrnet14", [], {"stem_width": 8}),
    "vitfs": ("vitfs_nano", [], {}),
    "timm_cnn": ("test_resnet", [], {}),
    "timm_vit": ("test_vit", [], {}),
    "cal_teacher": ("test_resnet", [{"name": "cal", "num_maps": 4}], {}),
}
"""family -> (model.name, model.plugins, model.kwargs), each at 32 px with 3 classes."""


def make_checkpoint(folder: Path, name: str, plugins: list, kwargs: dict, img_size: int = 32,
                    class_names=("red_disc", "green_square", "blue_bar"), seed: int = 0,
                    metrics: dict | None = None, perturb_zeros: bool = False) -> Path:
    """Build the deployed model of a tiny config, give BatchNorm non-trivial statistics, and
    save it as ``folder/last.safetensors`` with the metadata training writes.

    ``perturb_zeros``: fill every all-zero parameter (zero-initialised LoRA B, adapter
    up-projections, GLSim's head, biases) with small random values, so that every plug-in part
    changes the output, as after training."""
    from fgir.config import load_config
    from fgir.engine.build import build_model, normalization
    from fgir.engine.checkpoint import checkpoint_meta, save_weights

    over = [f"model.name={name}", "data.name=fonts", f"data.img_size={img_size}", "data.resize_ratio=1.0",
            f"run.name={folder.name}", f"run.seed={seed}"]
    cfg = load_config(overrides=over)
    cfg.model.plugins = []
    cfg.model.kwargs = dict(kwargs)
    if plugins:
        from fgir.config import config_from_dict, to_dict

        d = to_dict(cfg)
        d["model"]["plugins"] = plugins
        cfg = config_from_dict(d)
    torch.manual_seed(seed)
    model = build_model(cfg, len(class_names))
    with torch.no_grad():  # random running stats so eval-mode BN is not the identity
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
        for p in model.parameters() if perturb_zeros else ():
            if p.numel() and not bool(p.ne(0).any()):
                p.normal_(0.0, 0.05)
    mean, std = normalization(cfg, model)
    meta = checkpoint_meta(cfg, len(class_names), list(class_names), 3, 30, mean, std, metrics or {})
    folder.mkdir(parents=True, exist_ok=True)
    return save_weights(model.eval(), folder / "last.safetensors", meta)


def family_checkpoints(root: Path) -> dict[str, Path]:
    """One tiny checkpoint per family of :data:`FAMILIES` under ``root``."""
    return {fam: make_checkpoint(root / fam, *spec) for fam, spec in FAMILIES.items()}


def publish_to_cache(repo_folder: Path, repo_id: str, cache: Path, commit: str = "0" * 40) -> Path:
    """Lay a pushed repository folder out as the Hugging Face cache would hold it after a download
    (``models--OWNER--NAME/{refs/main, snapshots/<commit>/...}``): the local stand-in for the hub."""
    import shutil

    repo = cache / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(repo_folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return repo / "snapshots" / commit
