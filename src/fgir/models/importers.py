"""Import the TGDA authors' published student checkpoints (arXiv 2507.12157, spec tgda.md §6.3, §12).

The published files ([HF] ERISLab/TGDA) are ``torch.save`` dicts with ``config`` (a pickled
``argparse.Namespace``), ``model`` (the state dict of the reference CAL student wrapper),
``accuracy`` and ``epoch``. Loading them must not run arbitrary pickled code, so
:func:`read_tgda_checkpoint` first tries ``torch.load(weights_only=True)`` and, when that refuses
the file, reads the zip archive with a restricted unpickler of our own that rebuilds only tensors,
storages and plain containers; every other pickled object (the Namespace, numpy scalars, devices,
paths) becomes an inert placeholder and is dropped. From the Namespace only the plain values of
:data:`CONFIG_WHITELIST` are kept.

Key mapping (what we assume about the reference model definitions):

* The wrapper holds ``encoder`` and ``dfsm``; ``dfsm = Sequential(Reduce(mean), Linear)``, so the
  classifier is ``model.dfsm.1.{weight,bias}`` and becomes our ``fc`` (LRNet) or ``head`` (ViTFS).
* CNN students: ``encoder`` is the backbone itself (``model.encoder.*``), built without a
  classifier. The reference ``LRResNet`` follows timm's ResNet naming (``conv1``, ``bn1``, ``act1``,
  ``layer{1..5}.{i}.{conv,bn}{1,2,3}``, ``downsample.{0,1}``), which is ours, so the mapping is a
  prefix strip.
* Token students: ``encoder = Sequential(backbone, Rearrange)`` (``model.encoder.0.*``). The
  reference ViTFS follows timm's VisionTransformer naming (``reg_token``, ``blocks.{i}.norm1``,
  ``attn.{qkv,proj}``, ``ls1.gamma``, ``mlp.{fc1,fc2}``, ``norm``), and its ``ConvPatchingStem``
  names ``conv3x3layers.{i}.{conv,norm}`` and ``conv1x1`` as the authors' earlier releases do; ours
  match. Two layouts are accepted besides ours, because the exact reference file is not public in
  a form we could check:
  - BatchNorm over tokens written as ``Sequential(Rearrange, BatchNorm1d, Rearrange)`` (the
    authors' idiom elsewhere), i.e. ``norm1.1.weight`` -> ``norm1.weight``;
  - a stored sin-cos table (``pos_embed``), which we rebuild, so it is dropped after checking that
    it equals ours.
* A ``module.`` prefix (DDP) is stripped.

Anything else that does not map raises with the list of offending keys; ``extra_renames`` (regex,
replacement pairs applied after the built-in mapping) handles a layout we did not foresee.
:func:`tgda_model_kwargs` gives the builder kwargs that reproduce a checkpoint: LRNet checkpoints
without stem ``bn1.*`` keys (the reference's early runs) need ``stem_bn=False``, and ViTFS
checkpoints ``legacy_register_slice="wrapper"`` (the published students were trained with the
reference wrapper's register slicing).
"""

from __future__ import annotations

import io
import json
import logging
import pickle
import re
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

__all__ = ["CONFIG_WHITELIST", "import_tgda_checkpoint", "read_reference_checkpoint", "read_tgda_checkpoint",
           "save_imported", "strip_ddp_prefix", "tgda_model_kwargs"]

#: Reference config keys worth keeping (tgda.md §14.1); only plain values are kept.
CONFIG_WHITELIST: tuple[str, ...] = (
    "model_name", "num_classes", "image_size", "student_image_size", "temp", "loss_kd_weight",
    "loss_orig_weight", "teacher_eval_mode", "sd", "ls", "trivial_aug", "re", "epochs", "lr", "base_lr",
    "weight_decay", "batch_size", "seed", "dataset_name", "model_name_teacher", "selector", "tgda",
    "warmup_steps", "warmup_epochs", "opt", "sched",
)

#: Reference model names that differ from ours.
REFERENCE_NAMES: dict[str, str] = {
    "vitfs_tiny_patch16_gap_reg4_dinov2_bn_init": "vitfs_tiny_patch16_gap_reg4_dinov2_bn",
}

_PLAIN = (bool, int, float, str, type(None))
_BN_SUFFIX = r"(weight|bias|running_mean|running_var|num_batches_tracked)"


# ---------------------------------------------------------------------------------------------
# Safe reading
# ---------------------------------------------------------------------------------------------
class _Inert:
    """Stands in for any pickled global we do not allow; absorbs construction and state."""

    def __init__(self, *args: Any, **kwargs: Any):
        pass

    def __setstate__(self, state: Any) -> None:
        pass


class _InertNamespace(_Inert):
    """Stands in for ``argparse.Namespace``; keeps its attribute dict as data, never executes it."""

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict, slots) form
            state = state[0]
        self.state = state if isinstance(state, dict) else {}


class _StorageRef:
    def __init__(self, tensor: torch.Tensor):
        self.tensor = tensor  # flat 1-D tensor over the storage bytes


def strip_ddp_prefix(key: str) -> str:
    """``key`` without the ``module.`` prefix that a DDP-wrapped model adds."""
    return key[len("module."):] if key.startswith("module.") else key


def _rebuild_tensor(storage: Any, offset: int, size: tuple, stride: tuple, *args: Any) -> Any:
    if not isinstance(storage, _StorageRef):
        return _Inert()
    return storage.tensor.as_strided(tuple(size), tuple(stride), offset)


def _rebuild_parameter(data: Any, *args: Any) -> Any:
    return data


def _rebuild_from_type(func: Any, new_type: Any, args: tuple, state: Any) -> Any:
    return func(*args) if func in (_rebuild_tensor, _rebuild_parameter) else _Inert()


_STORAGE_DTYPES: dict[str, torch.dtype] = {
    "DoubleStorage": torch.float64, "FloatStorage": torch.float32, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


class _NumpyDtype(_Inert):
    """Stands in for ``numpy.dtype``: records a plain numeric type code and the byte order."""

    _CODES = {"b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8"}

    def __init__(self, code: Any = None, *args: Any):
        self.code = code if code in self._CODES else None
        self.order = "<"

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">", "|", "="):
            self.order = state[1]


def _numpy_scalar(dtype: Any, data: Any = None) -> Any:
    """A numpy scalar as a Python number (plain numeric dtypes only)."""
    if not isinstance(dtype, _NumpyDtype) or dtype.code is None or not isinstance(data, bytes):
        return _Inert()
    import numpy as np

    return np.frombuffer(data, dtype=np.dtype(dtype.order.replace("|", "=") + dtype.code))[0].item()


def _latin1_bytes(text: Any, encoding: Any = None) -> Any:
    """Protocol-2 pickles write ``bytes`` as ``_codecs.encode(str, 'latin1')``."""
    return text.encode("latin1") if isinstance(text, str) and encoding == "latin1" else _Inert()


class _StorageType:
    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype


class _RestrictedUnpickler(pickle.Unpickler):
    """Rebuilds tensors from a torch zip archive; every other global becomes :class:`_Inert`."""

    _ALLOWED: dict[tuple[str, str], Any] = {
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
        ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type,
        ("collections", "OrderedDict"): OrderedDict,
        ("argparse", "Namespace"): _InertNamespace,
        ("numpy", "dtype"): _NumpyDtype,
        ("_codecs", "encode"): _latin1_bytes,
        ("numpy.core.multiarray", "scalar"): _numpy_scalar,
        ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    }

    def __init__(self, file: io.BytesIO, zf: zipfile.ZipFile, prefix: str):
        super().__init__(file)
        self._zf, self._prefix = zf, prefix
        self._storages: dict[str, _StorageRef] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return self._ALLOWED[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        return _Inert

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"unsupported storage type {storage_type!r}")
        if key not in self._storages:
            raw = bytearray(self._zf.read(f"{self._prefix}data/{key}"))
            dtype = storage_type.dtype
            flat = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
            self._storages[key] = _StorageRef(flat[:numel] if numel <= flat.numel() else flat)
        return self._storages[key]


def _restricted_load(path: Path) -> Any:
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path}: not a torch zip archive (legacy torch.save format is not supported by the "
                         "safe reader); re-save it with a recent PyTorch in a sandbox.")
    with zipfile.ZipFile(path) as zf:
        pkl = [n for n in zf.namelist() if n.endswith("data.pkl")]
        if len(pkl) != 1:
            raise ValueError(f"{path}: expected one data.pkl in the archive, found {pkl}.")
        prefix = pkl[0][: -len("data.pkl")]
        order = f"{prefix}byteorder"
        if order in zf.namelist() and zf.read(order).decode().strip() != "little":
            raise ValueError(f"{path}: big-endian archives are not supported.")
        return _RestrictedUnpickler(io.BytesIO(zf.read(pkl[0])), zf, prefix).load()


def _sanitize(obj: Any) -> Any:
    """Keep tensors, plain values and containers of them; drop inert placeholders."""
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, _PLAIN):
        return obj
    if isinstance(obj, Mapping):
        out = OrderedDict() if isinstance(obj, OrderedDict) else {}
        for k, v in obj.items():
            v = _sanitize(v)
            if v is not _DROP:
                out[k] = v
        return out
    if isinstance(obj, (list, tuple)):
        items = [v for v in (_sanitize(v) for v in obj) if v is not _DROP]
        return type(obj)(items) if isinstance(obj, list) else tuple(items)
    return _DROP


_DROP = object()


def _config_from(obj: Any, keys: Iterable[str] = CONFIG_WHITELIST) -> dict[str, Any]:
    if isinstance(obj, _InertNamespace):
        obj = obj.state
    elif hasattr(obj, "__dict__") and type(obj).__name__ == "Namespace":  # weights_only allow-listed
        obj = vars(obj)
    if not isinstance(obj, Mapping):
        return {}
    return {k: obj[k] for k in keys if k in obj and isinstance(obj[k], _PLAIN)}


def read_tgda_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a published TGDA ``.pth`` without executing pickled code.

    Returns:
        ``{"model": state dict, "config": whitelisted plain config values, "accuracy", "epoch"}``
        (the last two only when they are plain numbers).
    """
    return read_reference_checkpoint(path)


def read_reference_checkpoint(path: str | Path, extra_keys: Iterable[str] = ()) -> dict[str, Any]:
    """Read an authors' ``{"config": Namespace, "model": state dict, ...}`` ``.pth`` without executing
    pickled code (TGDA, GLSim, ...); ``extra_keys`` are config values kept besides
    :data:`CONFIG_WHITELIST` (plain values only). Returns what :func:`read_tgda_checkpoint` does."""
    path = Path(path)
    keys = (*CONFIG_WHITELIST, *extra_keys)
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path}: not a PyTorch checkpoint (torch.save zip archive); the legacy pre-1.6 format is "
                         "not read either (re-save it with a recent PyTorch in a sandbox).")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
        config = {}
    except pickle.UnpicklingError as err:
        log.info("weights_only load refused %s (%s); using the restricted reader.", path,
                 str(err).splitlines()[0])
        loaded = _restricted_load(path)
        config = _config_from(loaded.get("config"), keys) if isinstance(loaded, Mapping) else {}
        raw = _sanitize(loaded)
    if not isinstance(raw, Mapping):
        raise ValueError(f"{path}: expected a dict checkpoint, got {type(raw).__name__}.")
    if not config:
        config = _config_from(raw.get("config"), keys)
    state = raw.get("model", raw)
    if not isinstance(state, Mapping) or not any(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: no state dict found (keys: {sorted(raw)[:10]}).")
    out: dict[str, Any] = {"model": {k: v for k, v in state.items() if isinstance(v, torch.Tensor)},
                           "config": config}
    for k in ("accuracy", "epoch"):
        v = raw.get(k)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[k] = v
    return out


# ---------------------------------------------------------------------------------------------
# Key mapping
# ---------------------------------------------------------------------------------------------
def _family(model_name: str) -> str:
    if model_name.startswith("lrnet"):
        return "lrnet"
    if model_name.startswith("vitfs"):
        return "vitfs"
    raise ValueError(f"import_tgda_checkpoint: unsupported student {model_name!r}; expected an lrnet* or "
                     "vitfs* model (plain timm ResNets load with timm's own key names).")


def _check_pos_embed(name: str, value: torch.Tensor, dim: int) -> None:
    from .backbones.vitfs import posemb_sincos_2d

    table = value.reshape(-1, value.shape[-1]) if value.ndim >= 2 else value
    n = table.shape[0]
    g = int(round(n ** 0.5))
    if table.ndim != 2 or table.shape[1] != dim or g * g != n:
        warnings.warn(f"dropping {name} of shape {tuple(value.shape)}: not a square sin-cos table.",
                      stacklevel=3)
        return
    ours = posemb_sincos_2d(g, g, dim)
    if not torch.allclose(table.float(), ours, atol=1e-4):
        warnings.warn(f"{name} differs from our sin-cos table (max |diff| "
                      f"{(table.float() - ours).abs().max().item():.3g}); outputs may differ.", stacklevel=3)


def tgda_model_kwargs(state: Mapping[str, torch.Tensor], model_name: str) -> dict[str, Any]:
    """Builder kwargs that reproduce an imported checkpoint: ``num_classes``; LRNet ``stem_bn``
    (False when the stem has no ``bn1.*``); ViTFS ``legacy_register_slice="wrapper"``, the token
    selection the published students were trained with (tgda.md §6.2)."""
    head = "fc" if _family(model_name) == "lrnet" else "head"
    weight = state.get(f"{head}.weight")
    kwargs: dict[str, Any] = {"num_classes": weight.shape[0] if weight is not None else 0}
    if _family(model_name) == "lrnet":
        kwargs["stem_bn"] = any(k.startswith("bn1.") for k in state)
    else:
        kwargs["legacy_register_slice"] = "wrapper"
    return kwargs


def import_tgda_checkpoint(state_dict_or_path: Mapping[str, torch.Tensor] | str | Path, model_name: str,
                           num_classes: int | None = None,
                           extra_renames: Iterable[tuple[str, str]] = ()) -> dict[str, torch.Tensor]:
    """Map a TGDA student checkpoint onto our module names and validate it.

    Args:
        state_dict_or_path: a ``.pth`` path (read with :func:`read_tgda_checkpoint`), the full
            checkpoint dict, or the wrapper's state dict.
        model_name: our model name (``lrnet14``, ``vitfs_tiny``, ...) or a reference alias.
        num_classes: expected classifier width; inferred from ``model.dfsm.1.weight`` when None.
        extra_renames: ``(regex, replacement)`` pairs applied to each mapped key, for layouts the
            built-in mapping does not know.

    Returns:
        A state dict that loads with ``strict=True`` into
        ``create_model(model_name, **tgda_model_kwargs(state, model_name))``.

    Raises:
        ValueError: keys outside the student, or missing/unexpected/mis-shaped keys against our
            model; the message lists them.
    """
    from .factory import create_model

    model_name = REFERENCE_NAMES.get(model_name, model_name)
    family = _family(model_name)
    if isinstance(state_dict_or_path, (str, Path)):
        src = read_tgda_checkpoint(state_dict_or_path)["model"]
    else:
        src = state_dict_or_path
        if "model" in src and isinstance(src["model"], Mapping):
            src = src["model"]

    enc = "model.encoder." if family == "lrnet" else "model.encoder.0."
    head = "fc." if family == "lrnet" else "head."
    out: dict[str, torch.Tensor] = {}
    outside, dropped = [], []
    for key, value in src.items():
        k = strip_ddp_prefix(key)
        if k.startswith(enc):
            k = k[len(enc):]
        elif k.startswith("model.dfsm.1."):
            k = head + k[len("model.dfsm.1."):]
        else:
            outside.append(key)
            continue
        if family == "vitfs":
            k = re.sub(rf"^((?:blocks\.\d+\.)?norm\d?)\.1\.{_BN_SUFFIX}$", r"\1.\2", k)
            if k in ("pos_embed", "sin2d_embedding"):
                dropped.append(key)
                _check_pos_embed(key, value, _src_dim(src, enc))
                continue
        for pattern, repl in extra_renames:
            k = re.sub(pattern, repl, k)
        out[k] = value
    if outside:
        raise ValueError(f"{len(outside)} keys are outside the student ({enc}*, model.dfsm.1.*): "
                         f"{outside[:8]}{' ...' if len(outside) > 8 else ''}. "
                         "Pass the student wrapper's state dict.")
    if dropped:
        log.info("dropped rebuilt buffers: %s", dropped)

    kwargs = tgda_model_kwargs(out, model_name)
    if num_classes is not None and kwargs["num_classes"] != num_classes:
        raise ValueError(f"checkpoint has a {kwargs['num_classes']}-way head, "
                         f"expected num_classes={num_classes}.")
    ref = create_model(model_name, **kwargs).state_dict()
    missing = sorted(set(ref) - set(out))
    unexpected = sorted(set(out) - set(ref))
    shapes = sorted(k for k in set(ref) & set(out) if ref[k].shape != out[k].shape)
    if missing or unexpected or shapes:
        bad_shapes = [(k, tuple(out[k].shape), tuple(ref[k].shape)) for k in shapes[:8]]
        raise ValueError(
            f"checkpoint does not match {model_name} ({kwargs}): missing {missing[:8]}, unexpected "
            f"{unexpected[:8]}, shape mismatch {bad_shapes}. "
            "Check model_name, or pass extra_renames for an unforeseen layout.")
    return {k: out[k] for k in ref}


def _src_dim(src: Mapping[str, torch.Tensor], enc: str) -> int:
    """Embedding width of a token student, read from its register tokens or final norm."""
    for k in (f"{enc}reg_token", f"{enc}norm.weight", f"{enc}norm.1.weight"):
        if k in src:
            return src[k].shape[-1]
    return -1


def save_imported(state: Mapping[str, torch.Tensor], out_path: str | Path,
                  meta: Mapping[str, Any] | None = None) -> Path:
    """Write an imported state dict as safetensors (plus ``<name>.json`` with ``meta`` if given).

    Tensors are made contiguous and unshared; ``meta`` values must be JSON-serialisable.
    """
    from safetensors.torch import save_file

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
    save_file(tensors, str(out_path), metadata={"format": "pt", "source": "fgir.models.importers"})
    if meta is not None:
        out_path.with_suffix(".json").write_text(json.dumps(dict(meta), indent=2, sort_keys=True))
    return out_path
