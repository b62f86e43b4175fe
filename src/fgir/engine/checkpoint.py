"""Checkpoints: safetensors weights with JSON metadata inside, never pickles.

A run folder holds ``last.safetensors`` (the deployable weights; the resolved config, class
names, epoch and metrics live in the file's metadata, so the file alone rebuilds the model),
``best.safetensors`` with ``run.selection=best_val``, and ``state_eNNNN.safetensors`` with the
training state (optimizer, scheduler, scaler, EMA, RNG, epoch, step) that ``--resume`` needs.
Each file is written to a temporary name and renamed into place, and the state file for an
epoch is written *before* the weights that point at it, so a crash or Ctrl-C at any moment
leaves the last complete checkpoint intact.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import save_file

from ..config import Config, config_from_dict, to_dict

SCHEMA = 2
"""Checkpoint metadata schema. 2: plug-ins in ``model.plugins``, task fields flat under ``task``;
schema-1 configs (``task.cal`` / ``task.tgda`` sections) are migrated on read."""

_REQUIRED_META = {"config": dict, "num_classes": int, "class_names": list, "mean": list, "std": list,
                  "img_size": int}


class CheckpointError(ValueError):
    """A checkpoint is missing, malformed, or does not fit the model it is loaded into."""


# ----------------------------------------------------------------------------- generic state <-> tensors
def flatten_state(obj: Any, tensors: dict[str, torch.Tensor], prefix: str = "s") -> Any:
    """Replace tensors in a nested structure by references; returns a JSON-able skeleton."""
    if isinstance(obj, torch.Tensor):
        key = f"{prefix}"
        tensors[key] = obj.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        return {"__dict__": [[flatten_state(k, tensors, f"{prefix}.k{i}"), flatten_state(v, tensors, f"{prefix}.{i}")]
                             for i, (k, v) in enumerate(obj.items())]}
    if isinstance(obj, (list, tuple)):
        return {"__list__" if isinstance(obj, list) else "__tuple__":
                [flatten_state(v, tensors, f"{prefix}.{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype)}
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"Cannot store object of type {type(obj).__name__} in a checkpoint.")


def unflatten_state(skel: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(skel, dict):
        if "__tensor__" in skel:
            return tensors[skel["__tensor__"]]
        if "__dict__" in skel:
            return {unflatten_state(k, tensors): unflatten_state(v, tensors) for k, v in skel["__dict__"]}
        if "__list__" in skel:
            return [unflatten_state(v, tensors) for v in skel["__list__"]]
        if "__tuple__" in skel:
            return tuple(unflatten_state(v, tensors) for v in skel["__tuple__"])
        if "__ndarray__" in skel:
            return np.array(skel["__ndarray__"], dtype=skel["dtype"])
    return skel


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes (key order): stored in each file's
    metadata (``fgir_sha256``) and verified on load, so a flipped byte is an error, not NaN output."""
    h = hashlib.sha256()
    for k in sorted(tensors):
        v = tensors[k].detach().contiguous().cpu()
        h.update(f"{k}|{v.dtype}|{tuple(v.shape)}|".encode())
        if v.numel():
            h.update(v.view(-1).view(torch.uint8).numpy().tobytes() if v.dtype != torch.bool
                     else v.numpy().tobytes())
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """Write, fsync, rename, fsync the folder: a crash leaves the old file or the new one, whole."""
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    seen: set[int] = set()  # safetensors refuses shared storage (tied weights, e.g. in a training state): copy
    for k, v in list(tensors.items()):
        if v.numel() and v.data_ptr() in seen:
            tensors[k] = v.clone()
        seen.add(v.data_ptr())
    save_file(tensors, str(tmp), metadata={**metadata, "fgir_sha256": tensors_sha256(tensors)})
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    siblings = [q for q in path.parent.iterdir() if q.is_file() and q.suffix in (".json", ".yaml", ".csv")]
    if siblings:  # checkpoint files get the permissions of the other run files
        os.chmod(tmp, siblings[0].stat().st_mode & 0o777)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def verify_tensors(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None, where: str,
                   finite: bool = True) -> dict[str, torch.Tensor]:
    """Check a loaded file against its stored checksum, and (``finite``) refuse NaN/Inf weights."""
    want = (metadata or {}).get("fgir_sha256")
    if want and tensors_sha256(tensors) != want:
        raise CheckpointError(f"{where} is corrupt: its tensors do not match the checksum stored in the file "
                              "(a changed or damaged byte); use another checkpoint or retrain.")
    if finite:
        bad = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:
            raise CheckpointError(f"{where} holds non-finite values (NaN/Inf) in {len(bad)} tensor(s), e.g. "
                                  f"{bad[:3]}; refusing to load it.")
    return tensors


def rng_state() -> dict:
    """torch CPU, CUDA (one state per device; empty unless CUDA is in use), numpy and python RNG states."""
    # Only an initialised CUDA has states worth saving; asking would otherwise create a context.
    cuda = list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    return {"torch": torch.get_rng_state(), "cuda": cuda, "numpy": list(np.random.get_state()),
            "python": list(random.getstate()[1]), "python_version": random.getstate()[0],
            "python_gauss": random.getstate()[2]}


def set_rng_state(st: dict) -> None:
    """Restore ``rng_state()``; CUDA states are restored when this process has as many devices
    as the saving one (a state saved without CUDA, or from older checkpoints, leaves CUDA alone)."""
    torch.set_rng_state(st["torch"])
    cuda = st.get("cuda") or []
    if cuda:
        have = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if have == len(cuda):
            torch.cuda.set_rng_state_all(cuda)
        else:
            warnings.warn(f"The training state holds CUDA RNG states for {len(cuda)} device(s) but this process "
                          f"has {have}; CUDA random streams are not restored, so the resumed run is not "
                          "bit-identical to an uninterrupted one.", stacklevel=2)
    np_state = st["numpy"]
    np.random.set_state((np_state[0], np.asarray(np_state[1], dtype=np.uint32), *np_state[2:]))
    random.setstate((st["python_version"], tuple(st["python"]), st["python_gauss"]))


# ----------------------------------------------------------------------------- weights
def save_weights(model: nn.Module, path: str | os.PathLike, meta: dict, only: dict | None = None) -> Path:
    """Write the model's state dict and ``meta`` (JSON) atomically to a .safetensors file.

    ``only`` (from :func:`trainable_spec`, for ``model.save=trainable``) keeps just its ``keys`` and
    records its ``meta`` (backbone identity) under ``meta["adapter_only"]``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = {k: v for k, v in model.state_dict().items()}
    if only is not None:
        keep = set(only["keys"])
        sd = {k: v for k, v in sd.items() if k in keep}
        meta = {**meta, "adapter_only": only["meta"]}
    # safetensors refuses shared storage: clone tensors that alias another entry
    seen: dict[int, str] = {}
    for k, v in list(sd.items()):
        ptr = v.data_ptr()
        if ptr in seen and v.numel() > 0:
            sd[k] = v.clone()
        seen[ptr] = k
    _atomic_save(sd, path, {"fgir": json.dumps({"schema": SCHEMA, **meta})})
    return path


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A run folder resolves to its ``best.safetensors`` (if selection=best_val) or ``last.safetensors``."""
    p = Path(path)
    if p.is_dir():
        for name in ("best.safetensors", "last.safetensors"):
            if (p / name).is_file():
                cfg_sel = read_meta(p / "last.safetensors").get("config", {}).get("run", {}).get("selection") \
                    if (p / "last.safetensors").is_file() else "last"
                if name == "best.safetensors" and cfg_sel != "best_val":
                    continue
                return p / name
        raise CheckpointError(f"No checkpoint in run folder {p} (expected last.safetensors).")
    if not p.is_file():
        raise CheckpointError(f"Checkpoint not found: {p}")
    if p.suffix != ".safetensors":
        raise CheckpointError(f"{p}: fgir checkpoints are .safetensors files; for a timm/PyTorch state dict use "
                              "model.checkpoint=... or `fgir import`.")
    return p


def read_meta(path: str | os.PathLike) -> dict:
    p = resolve_checkpoint(path)
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"{p} is not a readable safetensors file: {e}") from e
    if "fgir" not in meta:
        raise CheckpointError(f"{p} has no fgir metadata (not written by fgir).")
    try:
        data = json.loads(meta["fgir"])
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{p}: the fgir metadata is not valid JSON ({e}).") from e
    return check_meta(data, str(p))


def check_meta(meta: Any, where: str) -> dict:
    """Validate checkpoint metadata against the schema (and migrate schema-1 configs)."""
    from ..config import migrate_legacy

    if not isinstance(meta, dict):
        raise CheckpointError(f"{where}: the fgir metadata must be a JSON object, got {type(meta).__name__}.")
    schema = meta.get("schema")
    if not isinstance(schema, int) or schema < 1:
        raise CheckpointError(f"{where}: metadata has no valid 'schema' number (got {schema!r}).")
    if schema > SCHEMA:
        raise CheckpointError(f"{where} was written by a newer fgir (schema {schema}; this fgir reads up to "
                              f"{SCHEMA}). Upgrade fgir to read it.")
    for key, tp in _REQUIRED_META.items():
        if not isinstance(meta.get(key), tp) or isinstance(meta.get(key), bool):
            raise CheckpointError(f"{where}: metadata key '{key}' must be a {tp.__name__}, got "
                                  f"{type(meta.get(key)).__name__}.")
    if meta["num_classes"] <= 0 or len(meta["class_names"]) != meta["num_classes"]:
        raise CheckpointError(f"{where}: metadata has num_classes={meta['num_classes']} but "
                              f"{len(meta['class_names'])} class names.")
    for key in ("mean", "std"):
        if len(meta[key]) != 3 or not all(isinstance(v, (int, float)) for v in meta[key]):
            raise CheckpointError(f"{where}: metadata '{key}' must be 3 numbers, got {meta[key]!r}.")
    if meta["img_size"] <= 0:
        raise CheckpointError(f"{where}: metadata img_size must be > 0, got {meta['img_size']}.")
    if schema < SCHEMA:
        meta = {**meta, "config": migrate_legacy(meta["config"]), "schema": SCHEMA}
    return meta


def read_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a .safetensors file, verified (:func:`verify_tensors`); a truncated or
    malformed file is a :class:`CheckpointError` naming it."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001  (SafetensorError, OSError, ...: a damaged file)
        raise CheckpointError(f"{path} is not a readable safetensors file ({type(e).__name__}: {e}); "
                              "it may be truncated or damaged.") from e
    return verify_tensors(tensors, meta, str(path))


def build_from_meta(meta: dict, backbone: str | None = None, where: str = "checkpoint") -> tuple[nn.Module, Config]:
    """Rebuild the deployable model of a checkpoint (no pretrained download, no initialisation).

    An adapter-only checkpoint (``meta["adapter_only"]``) is rebuilt *with* its frozen backbone: the
    recorded source checkpoint (or ``backbone``, a path to use instead) or the pretrained weights."""
    from .build import build_model

    cfg = config_from_dict(meta["config"])
    info = meta.get("adapter_only")
    if info:
        src = backbone or (info.get("checkpoint") or {}).get("path", "")
        if src and not Path(src).exists():
            raise CheckpointError(f"{where} holds only the trained tensors; its frozen backbone {src} is missing "
                                  "(restore that file or run folder, or pass backbone=PATH to load_model).")
        cfg.model.checkpoint = src
        cfg.model.pretrained = bool(info.get("pretrained")) and not src
        img = int(meta.get("model_img_size") or meta["img_size"])
        if not cfg.model.img_size and img != cfg.data.img_size:
            cfg.model.img_size = img
        return build_model(cfg, meta["num_classes"]), cfg
    cfg.model.pretrained = False
    cfg.model.checkpoint = ""
    img = int(meta.get("model_img_size") or meta["img_size"])
    if not cfg.model.img_size and img != cfg.data.img_size:
        cfg.model.img_size = img  # a student deployed at another size than its inputs (TGDA S_s)
    return build_model(cfg, meta["num_classes"]), cfg


def load_model(path: str | os.PathLike, device: str = "cpu", backbone: str | None = None) -> nn.Module:
    """Rebuild the deployable model from a checkpoint's embedded config and load its weights.

    Adapter-only checkpoints (``model.save=trainable``) are merged onto their frozen backbone
    (``backbone`` overrides the recorded source path), which must match the recorded fingerprint.
    The returned module carries ``fgir_meta`` (class names, config, metrics, normalisation)."""
    p = resolve_checkpoint(path)
    meta = read_meta(p)
    model, _ = build_from_meta(meta, backbone=backbone, where=str(p))
    if meta.get("adapter_only"):
        merge_trainable(model, read_tensors(p), meta["adapter_only"], where=str(p))
    else:
        load_weights_into(model, read_tensors(p), where=str(p))
    model.fgir_meta = meta
    return model.to(device).eval()


def load_weights_into(model: nn.Module, sd: dict[str, torch.Tensor], where: str, strict: bool = True) -> None:
    own = model.state_dict()
    mismatched = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                  for k, v in sd.items() if k in own and own[k].shape != v.shape]
    if mismatched:
        raise CheckpointError(f"{where} does not fit this model ({len(mismatched)} shape mismatches, e.g. "
                              f"{mismatched[:3]}). Is it another architecture or class count?")
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if strict and (missing or unexpected):
        raise CheckpointError(f"{where} does not match the model architecture: missing {list(missing)[:5]} "
                              f"({len(missing)}), unexpected {list(unexpected)[:5]} ({len(unexpected)}).")


def init_from_checkpoint(model: nn.Module, path: str, num_classes: int, strict: bool = True,
                         keep_head: bool = True) -> list[str]:
    """``model.checkpoint=...``: take the weights from an fgir checkpoint (or a plain state dict
    file); the classifier is re-initialised when its shape differs (another class count), or
    always with ``keep_head=False`` (``model.checkpoint_head=false``).

    With ``strict`` every other tensor of the model must be in the checkpoint with the right
    shape; ``strict=False`` loads what fits and prints what was skipped. Returns the names of the
    model's tensors that were not loaded.
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"model.checkpoint={path}: file not found.")
    if p.is_dir() or p.suffix == ".safetensors":
        p = resolve_checkpoint(p)
        sd = read_tensors(p)
        info = read_meta(p).get("adapter_only")
        if info:  # continue an adapter-only run: its backbone first, then its trained tensors
            src = (info.get("checkpoint") or {}).get("path", "")
            if src:
                init_from_checkpoint(model, src, num_classes, strict=False, keep_head=keep_head)
            own, head = model.state_dict(), _head_keys(model)
            drop = {k for k in head & set(sd) if not keep_head or (k in own and own[k].shape != sd[k].shape)}
            if drop:
                print(f"model.checkpoint: fresh classifier, not the adapter run's ({sorted(drop)}).")
            merge_trainable(model, sd, info, where=f"model.checkpoint={path}", skip=drop)
            return sorted(drop)
    else:
        sd = torch.load(str(p), map_location="cpu", weights_only=True)
        if isinstance(sd, dict) and "state_dict" in sd:
            sd = sd["state_dict"]
        elif isinstance(sd, dict) and "model" in sd and isinstance(sd["model"], dict):
            sd = sd["model"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"model.checkpoint={path}: expected a state dict of tensors.")
    own = model.state_dict()
    head = _head_keys(model)
    shape_diff = [k for k, v in sd.items() if k in own and own[k].shape != v.shape]
    bad_shape = [k for k in shape_diff if k not in head]
    missing = [k for k in own if k not in sd and k not in head and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in own]
    problems = []
    if bad_shape:
        problems.append(f"{len(bad_shape)} tensor(s) of another shape, e.g. "
                        + ", ".join(f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in bad_shape[:3]))
    if missing:
        problems.append(f"{len(missing)} missing, e.g. {missing[:3]}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected, e.g. {unexpected[:3]}")
    if problems and strict:
        raise CheckpointError(f"model.checkpoint={path} does not fit '{type(model).__name__}': "
                              f"{'; '.join(problems)}. Is it another architecture? Set "
                              "model.checkpoint_strict=false to load only what fits.")
    if problems:
        print(f"model.checkpoint: loading what fits; skipped {'; '.join(problems)}.")
    head_diff = [k for k in shape_diff if k in head]
    if head_diff:
        print(f"model.checkpoint: re-initialising the classifier for {num_classes} classes ({head_diff}).")
    elif not keep_head and head & set(sd):
        print(f"model.checkpoint: fresh classifier (model.checkpoint_head=false; {sorted(head & set(sd))}).")
    sd = {k: v for k, v in sd.items() if k in own and k not in shape_diff and (keep_head or k not in head)}
    model.load_state_dict(sd, strict=False)
    return sorted(set(own) - set(sd))


def _head_keys(model: nn.Module) -> set[str]:
    """State-dict keys of the classifier (``get_classifier()``)."""
    clf = model.get_classifier() if hasattr(model, "get_classifier") else None
    if not isinstance(clf, nn.Module):
        return set()
    ids = {id(t) for t in list(clf.parameters()) + list(clf.buffers())}
    named = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    return {k for k, t in named.items() if id(t) in ids}


# ----------------------------------------------------------------------------- adapter-only checkpoints
def trainable_keys(model: nn.Module) -> list[str]:
    """State-dict keys a ``model.save=trainable`` checkpoint holds: every trainable parameter and every
    buffer (BatchNorm statistics change in ``train()`` even when their module is frozen)."""
    keep = {n for n, p in model.named_parameters() if p.requires_grad} | {n for n, _ in model.named_buffers()}
    return [k for k in model.state_dict() if k in keep]


def backbone_fingerprint(model: nn.Module, exclude: set[str] | list[str]) -> str:
    """sha256 over the names, dtypes, shapes and bytes of the state-dict tensors not in ``exclude``
    (the frozen backbone of an adapter-only checkpoint)."""
    import hashlib

    skip = set(exclude)
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        if k in skip:
            continue
        t = v.detach().cpu().contiguous().reshape(-1)
        h.update(f"{k}|{t.dtype}|{tuple(v.shape)}|".encode())
        h.update(memoryview(t.view(torch.uint8).numpy()))
    return h.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    return h.hexdigest()


def trainable_spec(cfg: Config, model: nn.Module) -> dict | None:
    """What :func:`save_weights` keeps for ``cfg.model.save`` (None for ``full``): the trainable keys and
    the backbone identity (model name, pretrained flag, source checkpoint path and file hash, and
    the fingerprint of the frozen tensors). Compute it once per run: the frozen part never changes."""
    if getattr(cfg.model, "save", "full") != "trainable":
        return None
    keys = trainable_keys(model)
    source: dict[str, str] = {}
    if cfg.model.checkpoint:
        src = Path(cfg.model.checkpoint)
        f = resolve_checkpoint(src) if (src.is_dir() or src.suffix == ".safetensors") else src
        source = {"path": str(src.resolve()), "file": str(Path(f).resolve()), "sha256": file_sha256(f)}
    return {"keys": keys, "meta": {"model": cfg.model.name, "pretrained": bool(cfg.model.pretrained),
                                   "checkpoint": source, "num_tensors": len(keys),
                                   "backbone_sha256": backbone_fingerprint(model, keys)}}


def merge_trainable(model: nn.Module, sd: dict[str, torch.Tensor], info: dict, where: str,
                    skip: set[str] = frozenset()) -> None:
    """Load an adapter-only state dict onto ``model`` (its frozen backbone already loaded) after checking
    that the backbone is the one the tensors were trained on; the tensors named in ``skip`` (a
    classifier to re-initialise) take part in the check but are not loaded."""
    own = model.state_dict()
    unexpected = [k for k in sd if k not in own]
    if unexpected:
        raise CheckpointError(f"{where} holds {len(unexpected)} tensor(s) this model lacks, e.g. {unexpected[:3]}: "
                              "another plug-in configuration?")
    got = backbone_fingerprint(model, set(sd))
    want = info.get("backbone_sha256", "")
    if got != want:
        src = (info.get("checkpoint") or {}).get("path") or ("pretrained " if info.get("pretrained") else "") + \
            str(info.get("model"))
        raise CheckpointError(f"{where} was trained on another backbone (fingerprint {want[:12]}, from {src}); the "
                              f"backbone loaded here has fingerprint {got[:12]}. Load it onto the backbone it was "
                              "trained on.")
    load_weights_into(model, {k: v for k, v in sd.items() if k not in skip}, where=where, strict=False)


# ----------------------------------------------------------------------------- training state
def save_training_state(run_dir: Path, epoch: int, state: dict) -> Path:
    tensors: dict[str, torch.Tensor] = {}
    skel = flatten_state(state, tensors)
    path = run_dir / f"state_e{epoch:04d}.safetensors"
    _atomic_save(tensors, path, {"fgir_state": json.dumps(skel), "epoch": str(epoch)})
    return path


def load_training_state(path: str | os.PathLike) -> dict:
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"Training state {p} not found; cannot resume exactly.")
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
            skel = json.loads(meta["fgir_state"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001  (SafetensorError, KeyError, JSON: a truncated or foreign file)
        raise CheckpointError(f"Training state {p} is unreadable ({type(e).__name__}: {e}); it may be "
                              "truncated.") from e
    verify_tensors(tensors, meta, f"Training state {p}", finite=False)
    return unflatten_state(skel, tensors)


def state_files(run_dir: Path) -> list[Path]:
    """The run's training states, newest epoch first."""
    return sorted(run_dir.glob("state_e*.safetensors"), key=lambda q: q.name, reverse=True)


def prune_states(run_dir: Path, keep: str) -> None:
    """Keep the state ``keep`` and the one before it (the fallback when the newest is damaged)."""
    older = [q for q in state_files(run_dir) if q.name < keep]
    spare = older[0].name if older else ""
    for q in run_dir.glob("state_e*.safetensors"):
        if q.name not in (keep, spare):
            q.unlink(missing_ok=True)


def checkpoint_meta(cfg: Config, num_classes: int, class_names: list[str], epoch: int, step: int,
                    mean, std, metrics: dict | None = None, state_file: str = "", img_size: int = 0,
                    model_img_size: int = 0, census: dict | None = None) -> dict:
    """Metadata of a deployable checkpoint: ``img_size`` is the size inputs are prepared at
    (``data.img_size``), ``model_img_size`` the size the model sees (resized to it), ``mean``/``std``
    the model's normalisation."""
    size = img_size or cfg.data.img_size
    return {"config": to_dict(cfg), "num_classes": num_classes, "class_names": list(class_names), "epoch": epoch,
            "step": step, "mean": [float(v) for v in mean], "std": [float(v) for v in std], "img_size": size,
            "model_img_size": model_img_size or size, "metrics": metrics or {}, "state_file": state_file,
            "census": census or {}}
