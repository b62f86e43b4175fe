"""The CPU-scale ViT backbone of the ViT-method benchmarks: ViTFS-T from scratch on CUB-100.

    python benchmarks/vit_backbone.py --root ../shared/data/cub100 [--out ~/.cache/fgir/bench/vit_backbone]

Trains configs/recipes/cpu/cub100_vitfs_tiny_128.yaml (40 epochs at 128 px on train_val, every
setting fixed a priori; test is scored once, at the last epoch) as one resumable stage: the run
folder is ``<out>/cub100_vitfs_tiny_128``, the default ``--backbone`` of benchmarks/clca_cub100.py,
glsim_cub100.py and ila_transfer.py (``--model vit_tiny_patch16_224`` trains a CLS-token ViT-T under
the same recipe, folder ``<out>/cub100_vit_tiny_patch16_224_128``). Re-running the command continues a
killed run from its last finished epoch and reuses a finished one. The same run by hand:

    fgir train -c configs/recipes/cpu/cub100_vitfs_tiny_128.yaml data.root=../shared/data/cub100 \
        run.output_dir=~/.cache/fgir/bench/vit_backbone
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fgir.benchmarks import stages

RECIPE = "configs/recipes/cpu/cub100_vitfs_tiny_128.yaml"
NAME = "cub100_vitfs_tiny_128"


def stage_name(model: str) -> str:
    """``cub100_vitfs_tiny_128`` for the default model, ``cub100_<model>_128`` for another."""
    return NAME if model == "vitfs_tiny" else f"cub100_{model}_128"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", required=True, help="CUB-100 root (../shared/data/cub100)")
    ap.add_argument("--out", default=str(Path.home() / ".cache" / "fgir" / "bench" / "vit_backbone"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", default="vitfs_tiny",
                    help="another ViT under the same recipe, e.g. vit_tiny_patch16_224 (a CLS-token ViT-T)")
    ap.add_argument("--override", nargs="*", default=[], help="extra config overrides (smoke runs)")
    a = ap.parse_args()
    out = Path(a.out).expanduser()
    name = stage_name(a.model)
    res = stages.run_stage(name, [RECIPE], [f"data.root={a.root}", f"model.name={a.model}", f"run.threads={a.threads}",
                                            "run.progress=false", *a.override], out)
    print(f"backbone run: {out / name}; test top-1 {res.get('test_top1', float('nan')):.2f}")


if __name__ == "__main__":
    main()
