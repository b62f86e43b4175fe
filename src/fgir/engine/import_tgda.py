"""`fgir import tgda PTH --out CKPT`: a published TGDA student checkpoint as an fgir checkpoint.

The authors' ``.pth`` files are read without executing pickled code and mapped onto our module
names by :mod:`fgir.models.importers`; this module adds what ``fgir eval`` / ``fgir predict`` need
to use the result: the resolved config (model name and builder kwargs, dataset, input size),
class names and normalisation, written as a regular fgir ``.safetensors`` checkpoint.
"""

from __future__ import annotations

from pathlib import Path

from ..config import Config, from_dict
from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD
from . import checkpoint as ckpt


def resolve_class_names(num_classes: int, class_names: str = "", dataset: str = "", root: str = "") -> list[str]:
    """An imported checkpoint's class names: from ``class_names`` (a file), the catalog ``dataset``, or
    ``class_1 ...``; their number must equal the classifier's."""
    if class_names:
        p = Path(class_names)
        if not p.is_file():
            raise FileNotFoundError(f"--class-names {p}: no such file (one class name per line, or a "
                                    "classid_classname.csv).")
        if p.suffix == ".csv":
            from ..data.manifest import read_class_table

            names = read_class_table(p)
        else:
            names = [line.strip() for line in p.read_text().splitlines() if line.strip()]
    elif dataset:
        from ..data.datasets import ManifestDataset

        names = ManifestDataset(dataset, "test", root).class_names
    else:
        names = [f"class_{i + 1}" for i in range(num_classes)]
    if len(names) != num_classes:
        raise ValueError(f"the checkpoint's classifier has {num_classes} classes but {len(names)} class names "
                         f"were given ({class_names or dataset}).")
    return list(names)


def checkpoint_file(pth: str) -> Path:
    """``pth`` as a Path; a one-line error when it is not a file."""
    src = Path(pth)
    if not src.is_file():
        raise FileNotFoundError(f"{src}: no such checkpoint file.")
    return src


def save_imported_checkpoint(cfg: Config, num_classes: int, names: list[str], state: dict, raw: dict, src: Path,
                             out: str) -> Path:
    """Build the model of ``cfg``, load the mapped ``state`` (every tensor must fit) and write it to
    ``out`` as a regular fgir checkpoint whose metadata keeps the reference run's accuracy, epoch,
    file name and config."""
    from .build import build_model

    model = build_model(cfg.validate(), num_classes)
    ckpt.load_weights_into(model, state, where=str(src))
    metrics = {f"reference_{k}": raw[k] for k in ("accuracy", "epoch") if k in raw}
    mean, std = tuple(cfg.data.mean), tuple(cfg.data.std)
    meta = ckpt.checkpoint_meta(cfg, num_classes, names, int(raw.get("epoch", 0) or 0), 0, mean, std, metrics)
    meta["source"] = {"file": src.name, "reference_config": raw["config"]}
    return ckpt.save_weights(model, out, meta)


def import_tgda(pth: str, out: str, model_name: str = "", img_size: int = 0, dataset: str = "", root: str = "",
                class_names: str = "", mean: tuple = IMAGENET_MEAN, std: tuple = IMAGENET_STD) -> dict:
    """Convert ``pth`` into an fgir checkpoint at ``out``; returns a summary.

    Args:
        pth: the published ``.pth``.
        out: the ``.safetensors`` file to write.
        model_name: our model name (default: the reference config's ``model_name``).
        img_size: the student's input size (default: the reference config's ``student_image_size`` or
            ``image_size``).
        dataset, root: catalog dataset for the class names (and for ``fgir eval``).
        class_names: a file with the class names (one per line or ``classid_classname.csv``).
    """
    from ..models.importers import REFERENCE_NAMES, import_tgda_checkpoint, read_tgda_checkpoint, tgda_model_kwargs

    src = checkpoint_file(pth)
    raw = read_tgda_checkpoint(src)
    ref = raw["config"]
    name = model_name or REFERENCE_NAMES.get(str(ref.get("model_name", "")), str(ref.get("model_name", "")))
    if not name:
        raise ValueError(f"{src} does not record its model name; pass --model (e.g. lrnet14, vitfs_tiny).")
    size = int(img_size or ref.get("student_image_size") or ref.get("image_size") or 0)
    if size <= 0:
        raise ValueError(f"{src} does not record its input size; pass --img-size (e.g. 128 or 448).")
    state = import_tgda_checkpoint(raw["model"], name)
    kwargs = tgda_model_kwargs(state, name)
    num_classes = int(kwargs.pop("num_classes"))
    names = resolve_class_names(num_classes, class_names, dataset, root)
    cfg: Config = from_dict(Config, {"model": {"name": name, "kwargs": kwargs},
                                     "data": {"name": dataset or "imported", "root": root, "img_size": size,
                                              "mean": list(mean), "std": list(std)}})
    path = save_imported_checkpoint(cfg, num_classes, names, state, raw, src, out)
    return {"checkpoint": str(path), "model": name, "num_classes": num_classes, "img_size": size,
            "builder_kwargs": kwargs}
