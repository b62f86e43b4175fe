"""The ``tagging`` Task: character class + MLM tag prediction (Animesion, spec ``animesion.md`` §6).

The model is a ``vilt`` plug-in model (:mod:`fgir.models.plugins.vilt`). Each training image's tags
(a side JSON, :mod:`fgir.data.tags`) are tokenised to L_t ids; a mask schedule decides, per step,
the probability that a token stays visible (:func:`visible_probability`); masked non-special
positions are replaced by id 1 (``constant``) or a random id (``random``) and scored
(:func:`mask_tokens`). Loss = CE(class) + ``w_mlm`` * CE(token logits, ignore -100).

Evaluation of the class head is the ordinary one (``model(images)`` feeds the inference query);
:func:`evaluate_tags` adds tag-level precision / recall / F1 (:func:`tag_metrics`) on a split.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import Config, ConfigError, TaskConfig, check_choice
from ..data.tags import CLS, PAD, SEP, UNUSED, TagTokenizer, load_vocab, read_tags_json
from ..registry import TASKS
from .classification import classification_loss
from .task import Task

__all__ = ["TaggingConfig", "TaggingTask", "visible_probability", "mask_tokens", "tag_metrics", "predict_tags",
           "evaluate_tags", "SPECIAL_IDS"]

SPECIAL_IDS = (PAD, CLS, SEP)
"""Never replaced, never scored."""


@dataclass
class TaggingConfig(TaskConfig):
    """Class + MLM tagging (Animesion, spec animesion.md §6): CE(class) + w_mlm * CE(masked tag tokens)."""

    name: str = "tagging"
    tags: str = ""
    """Side JSON {image dir: [tags]} of the training split; empty = tags.json next to the split CSVs."""
    schedule: str = "sigmoid"
    """Mask schedule: bert (15 % masked), full (all masked) or sigmoid (half-cosine from visible to masked)."""
    replace: str = "constant"
    """What a masked position becomes: constant (id 1) or random (uniform id in [0, V-1))."""
    warmup: float = 0.1
    """sigmoid: fraction of the training steps with every token visible."""
    cooldown: float = 0.5
    """sigmoid: fraction of the training steps (at the end) with every token masked."""
    w_mlm: float = 1.0
    """Weight of the MLM cross-entropy."""
    shuffle_tokens: bool = False
    """Shuffle each image's tag list before tokenising (per step)."""

    def validate(self, cfg: Config) -> None:
        check_choice("task.schedule", self.schedule, ["bert", "full", "sigmoid"])
        check_choice("task.replace", self.replace, ["constant", "random"])
        if not (0 <= self.warmup and 0 <= self.cooldown and self.warmup + self.cooldown < 1):
            raise ConfigError(f"task.warmup={self.warmup} and task.cooldown={self.cooldown} must be >= 0 with a "
                              "sum < 1.")
        if self.w_mlm < 0:
            raise ConfigError(f"task.w_mlm must be >= 0, got {self.w_mlm}.")
        if "vilt" not in [p.name for p in cfg.model.plugins]:
            raise ConfigError("task.name=tagging needs the vilt plug-in: "
                              "model.plugins=[{name: vilt, vocab: VOCAB.json}].")


def visible_probability(schedule: str, step: int, total: int, warmup: float = 0.1, cooldown: float = 0.5) -> float:
    """Probability that a token stays visible at training ``step`` of ``total`` (spec §6)."""
    if schedule == "bert":
        return 0.85
    if schedule == "full":
        return 0.0
    warm, cool = warmup * total, cooldown * total
    if step < warm:
        return 1.0
    if step > total - cool:
        return 0.0
    span = max(total - warm - cool, 1e-12)
    return 0.5 * (1.0 + math.cos(math.pi * (step - warm) / span))


def mask_tokens(ids: torch.Tensor, p_visible: float, vocab_size: int, replace: str = "constant",
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs, labels)``: each non-special position stays visible with ``p_visible`` (Bernoulli);
    masked ones become id 1 or a random id in [0, V-1); labels hold the original id where masked, -100 elsewhere."""
    visible = torch.rand(ids.shape, generator=generator) < p_visible
    special = torch.zeros_like(ids, dtype=torch.bool)
    for s in SPECIAL_IDS:
        special |= ids == s
    masked = ~visible.to(ids.device) & ~special
    if replace == "random":
        fill = torch.randint(0, vocab_size - 1, ids.shape, generator=generator).to(ids.device)
    else:
        fill = torch.full_like(ids, UNUSED)
    return torch.where(masked, fill, ids), torch.where(masked, ids, torch.full_like(ids, -100))


def tag_metrics(pred: list[set[str]], true: list[set[str]]) -> dict[str, float]:
    """Tag-level precision / recall / F1: ``micro_*`` over all (image, tag) pairs, ``sample_*`` averaged
    per image (an image with no true and no predicted tags counts as 1.0, with only one of them as 0.0)."""
    if len(pred) != len(true):
        raise ValueError(f"{len(pred)} predictions for {len(true)} images.")
    tp = sum(len(p & t) for p, t in zip(pred, true))
    n_pred, n_true = sum(len(p) for p in pred), sum(len(t) for t in true)
    mp = tp / n_pred if n_pred else 0.0
    mr = tp / n_true if n_true else 0.0
    out = {"micro_precision": mp, "micro_recall": mr, "micro_f1": 2 * mp * mr / (mp + mr) if mp + mr else 0.0}
    ps, rs, fs = [], [], []
    for p, t in zip(pred, true):
        if not p and not t:
            ps.append(1.0), rs.append(1.0), fs.append(1.0)
            continue
        hit = len(p & t)
        pi, ri = (hit / len(p) if p else 0.0), (hit / len(t) if t else 0.0)
        ps.append(pi), rs.append(ri), fs.append(2 * pi * ri / (pi + ri) if pi + ri else 0.0)
    n = max(len(pred), 1)
    out.update(sample_precision=sum(ps) / n, sample_recall=sum(rs) / n, sample_f1=sum(fs) / n, images=len(pred))
    return out


@torch.no_grad()
def predict_tags(model: nn.Module, images: torch.Tensor, tokenizer: TagTokenizer,
                 query: torch.Tensor | None = None) -> list[list[str]]:
    """Tags for a batch (spec §6 inference): every position between [CLS] and [SEP] is a query;
    the per-position arg-max is decoded, de-duplicated and sorted."""
    if query is None:
        spec = model.fgir_vilt
        from ..data.tags import tag_query

        query = tag_query(images.shape[0], spec["max_len"], spec["vocab_size"], spec["query"], device=images.device)
    _, tokens = model.forward_tagging(images, query)
    return [tokenizer.decode(row.tolist()) for row in tokens.argmax(-1)[:, 1:-1]]


class TaggingTask(Task):
    """CE(class) + ``w_mlm`` * MLM CE over the masked tag tokens of each training batch."""

    def __init__(self, model: nn.Module, tokens: torch.Tensor, tag_lists: list[list[str]] | None,
                 tokenizer: TagTokenizer, total_steps: int, cfg: TaggingConfig, label_smoothing: float = 0.0):
        super().__init__()
        if not callable(getattr(model, "forward_tagging", None)) or getattr(model, "mlm_head", None) is None:
            raise ValueError("the tagging task needs a model with the vilt plug-in and its MLM head (mlm: true).")
        self.model = model
        self.tokens = tokens  # N x L_t ids of the training split (CPU; indexed by the batch's dataset indices)
        self.tag_lists, self.tokenizer = tag_lists, tokenizer
        self.total_steps, self.cfg, self.label_smoothing = max(1, int(total_steps)), cfg, label_smoothing
        self.step = 0  # the loop's optimizer step (set_progress; restored on resume)

    def set_progress(self, step: int, total: int) -> None:
        self.step, self.total_steps = int(step), max(1, int(total))

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        idx = batch["index"].cpu()
        if self.cfg.shuffle_tokens and self.tag_lists is not None:
            lists = [self.tag_lists[i] for i in idx.tolist()]
            order = [torch.randperm(len(t)).tolist() for t in lists]
            ids = self.tokenizer.encode_batch([[t[j] for j in o] for t, o in zip(lists, order)])
        else:
            ids = self.tokens[idx]
        p = visible_probability(self.cfg.schedule, self.step, self.total_steps, self.cfg.warmup, self.cfg.cooldown)
        inputs, labels = mask_tokens(ids, p, self.tokenizer.vocab_size, self.cfg.replace)
        device = batch["image"].device
        logits, token_logits = self.model.forward_tagging(batch["image"], inputs.to(device))
        loss_ce = classification_loss(logits, batch["target"], self.label_smoothing)
        labels = labels.to(device)
        if (labels != -100).any():
            loss_mlm = F.cross_entropy(token_logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100)
        else:  # every token visible (sigmoid warm-up): nothing to score, keep the graph connected
            loss_mlm = token_logits.sum() * 0.0
        return {"loss": loss_ce + self.cfg.w_mlm * loss_mlm, "logits": logits, "loss_ce": loss_ce.detach(),
                "loss_mlm": loss_mlm.detach()}


def _tags_path(cfg: Config, tags: str) -> Path:
    if tags:
        return Path(tags)
    from ..data.resolve import resolve_root

    manifest_dir, _ = resolve_root(cfg.data.name, cfg.data.root, split_fractions=cfg.data.split_fractions)
    return Path(manifest_dir) / "tags.json"


def split_tags(rows, tags: dict[str, list[str]], where: str) -> list[list[str]]:
    """The tag list of every row (by its image path); rows without an entry are an error."""
    import os

    missing = [r.dir for r in rows if os.path.normpath(r.dir) not in tags]
    if missing:
        raise ValueError(f"{len(missing)} of {len(rows)} images have no entry in {where} (first: {missing[:3]}); "
                         "give every image a list (an empty one when it has no tags).")
    return [tags[os.path.normpath(r.dir)] for r in rows]


def _vilt_entry(cfg: Config):
    return next(p for p in cfg.model.plugins if p.name == "vilt")


def tokenizer_for(cfg: Config) -> TagTokenizer:
    """The tag tokenizer of a vilt config (its vocab JSON and max_len)."""
    entry = _vilt_entry(cfg)
    if not entry.vocab:
        raise ConfigError("task.name=tagging needs the vilt plug-in's vocab (a tag vocabulary JSON, "
                          "fgir.data.tags.save_vocab), not only vocab_size.")
    return TagTokenizer(load_vocab(entry.vocab), entry.max_len)


@TASKS.register("tagging", config=TaggingConfig)
def build_tagging(cfg: Config, model: nn.Module, num_classes: int, **_) -> TaggingTask:
    from ..data.datasets import ManifestDataset

    tok = tokenizer_for(cfg)
    if tok.vocab_size != model.fgir_vilt["vocab_size"]:
        raise ConfigError(f"vilt vocabulary ({model.fgir_vilt['vocab_size']}) and tokenizer ({tok.vocab_size}) differ.")
    ds = ManifestDataset.from_config(cfg.data, cfg.data.train_split, check_files=False)
    path = _tags_path(cfg, cfg.task.tags)
    lists = split_tags(ds.rows, read_tags_json(path), str(path))
    total = max(1, len(ds) // cfg.optim.batch_size) * cfg.optim.epochs  # the loop's set_progress gives the exact count
    return TaggingTask(model, tok.encode_batch(lists), lists, tok, total, cfg.task, cfg.optim.label_smoothing)


@torch.no_grad()
def evaluate_tags(model: nn.Module, cfg: Config | None = None, split: str = "test", batch_size: int = 64,
                  tags: str = "") -> dict[str, float]:
    """Tag-level precision / recall / F1 of ``model`` (a vilt model, e.g. from
    :func:`fgir.engine.checkpoint.load_model`) on ``split``, against the tags of the side JSON
    (``tags``, else ``task.tags``, else tags.json next to the split CSVs). ``cfg`` defaults to the
    config embedded in the checkpoint the model was loaded from."""
    from ..config import config_from_dict
    from ..data.datasets import ManifestDataset
    from ..data.loader import DecodeLoader
    from ..data.transforms import BatchTransform, eval_resize_ratio, stored_size
    from .build import normalization

    if cfg is None:
        meta = getattr(model, "fgir_meta", None)
        if not meta:
            raise ValueError("evaluate_tags: pass cfg, or a model from fgir.engine.checkpoint.load_model.")
        cfg = config_from_dict(meta["config"])

    tok = tokenizer_for(cfg)
    ds = ManifestDataset.from_config(cfg.data, split)
    path = _tags_path(cfg, tags or getattr(cfg.task, "tags", ""))
    true = [set(t) for t in split_tags(ds.rows, read_tags_json(path), str(path))]  # out-of-vocabulary tags too
    mean, std = normalization(cfg, model)
    s = cfg.data.img_size
    loader = DecodeLoader(ds, BatchTransform(s, mean, std, train=False), batch_size=batch_size,
                          stored=stored_size(s, eval_resize_ratio(cfg.data)), shuffle=False, drop_last=False,
                          seed=cfg.run.seed, num_workers=cfg.data.num_workers)
    was = model.training
    model.eval()
    pred: list[set[str]] = []
    try:
        for batch in loader:
            pred += [set(t) for t in predict_tags(model, batch["image"], tok)]
    finally:
        model.train(was)
    return tag_metrics(pred, true)
