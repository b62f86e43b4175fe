"""Plug-in ``vilt``: a ViLT-style vision + tags model on any timm ViT with a class token.

Paper: Animesion (E. A. Rios et al., arXiv 2101.08674) and its ISCAS 2022 follow-up; the
single-stream design follows ViLT (W. Kim et al., arXiv 2102.03334). Spec: ``shared/specs/animesion.md`` §3.6, §6.

Tag ids (length L_t) go through BERT-style embeddings (word + learned position + token type, then
LayerNorm eps 1e-12 and dropout), are appended after the image tokens (CLS + patches with the
image position embedding), and the joint sequence runs through the ViT's own blocks and final
norm. The class logits come from the backbone's own head on the image tokens (timm ViTs: the CLS
token, LayerNorm + Linear; ViTFS: the mean of the patch tokens); with
``mlm`` an MLM head reads the last L_t positions: Linear(D, D) -> GELU -> LayerNorm -> decoder
Linear(D -> V, no bias) whose weight *is* the word-embedding weight, plus a bias of size V.

``model(images)`` (evaluation, predict, export) feeds the inference query ([CLS], L_t - 2 query
ids, [SEP]); ``model(images, text_ids)`` and ``model.forward_tagging(images, text_ids)`` take tag
ids. ``pad_mask: true`` hides [PAD] tag tokens from every query in attention (ViLT's text mask; the
Animesion reference's masking is not documented, so the default leaves them visible). The
plug-in does not compose with the token path (``ifa``, ``clca``, ``token_reduction``).
"""

from __future__ import annotations

import types
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...config import Config, ConfigError, PluginConfig, check_choice
from .base import register_plugin
from .token_reduction.path import check_vit

__all__ = ["ViLTConfig", "TextEmbeddings", "MLMHead", "apply_vilt"]


@dataclass
class ViLTConfig(PluginConfig):
    """ViLT-style vision + tags (Animesion, spec animesion.md §3.6): tag tokens appended to the image tokens."""

    name: str = "vilt"
    vocab: str = ""
    """Tag vocabulary JSON (fgir.data.tags.save_vocab); its length sets the vocabulary size."""
    vocab_size: int = 13504
    """Vocabulary size when vocab is empty (default: DAF:re's tag vocabulary, 13,504)."""
    max_len: int = 16
    """Tag sequence length L_t ([CLS] + up to L_t - 2 tags + [SEP], padded)."""
    mlm: bool = True
    """Build the MLM head (the tagging task needs it)."""
    query: str = "constant"
    """Inference query ids: constant (id 1) or random (uniform in [0, V-1))."""
    type_vocab: int = 2
    """Token-type embeddings (BERT: 2)."""
    dropout: float = 0.1
    """Dropout after the text embedding LayerNorm."""
    pad_mask: bool = False
    """Hide [PAD] tag tokens from attention (ViLT's text mask); false = the reference's unmasked attention."""

    def validate(self, cfg: Config, key: str) -> None:
        check_choice(f"{key}.query", self.query, ["constant", "random"])
        if not self.vocab and self.vocab_size <= 5:
            raise ConfigError(f"{key}.vocab_size must exceed the 5 special tokens (or set vocab, a tag vocabulary "
                              f"JSON), got {self.vocab_size}.")
        if self.max_len < 3:
            raise ConfigError(f"{key}.max_len must be >= 3 ([CLS], a tag, [SEP]), got {self.max_len}.")
        if self.type_vocab < 1:
            raise ConfigError(f"{key}.type_vocab must be >= 1, got {self.type_vocab}.")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"{key}.dropout must be in [0, 1), got {self.dropout}.")


class TextEmbeddings(nn.Module):
    """BERT-style embeddings: word + position + token type (0), LayerNorm, dropout."""

    def __init__(self, vocab_size: int, dim: int, max_len: int, type_vocab: int = 2, dropout: float = 0.1,
                 eps: float = 1e-12):
        super().__init__()
        self.word = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.position = nn.Embedding(max_len, dim)
        self.token_type = nn.Embedding(type_vocab, dim)
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.drop = nn.Dropout(dropout)
        for emb in (self.word, self.position, self.token_type):
            nn.init.normal_(emb.weight, std=0.02)
        with torch.no_grad():
            self.word.weight[0].zero_()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.shape[1] > self.position.num_embeddings:
            raise ValueError(f"tag sequence of length {ids.shape[1]} exceeds max_len {self.position.num_embeddings}.")
        pos = torch.arange(ids.shape[1], device=ids.device)
        x = self.word(ids) + self.position(pos)[None] + self.token_type(torch.zeros_like(ids))
        return self.drop(self.norm(x))


class MLMHead(nn.Module):
    """Linear(D, D) -> GELU -> LayerNorm -> Linear(D -> V, no bias; weight tied) + bias(V)."""

    def __init__(self, dim: int, word: nn.Embedding, eps: float = 1e-12):
        super().__init__()
        self.dense = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.decoder = nn.Linear(dim, word.num_embeddings, bias=False)
        self.decoder.weight = word.weight  # tied: one tensor
        self.bias = nn.Parameter(torch.zeros(word.num_embeddings))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.norm(F.gelu(self.dense(x)))) + self.bias


def _vocab_size(cfg: ViLTConfig) -> int:
    if not cfg.vocab:
        return int(cfg.vocab_size)
    from ...data.tags import load_vocab

    return len(load_vocab(cfg.vocab))


def _forward_features(self: nn.Module, x: torch.Tensor, text_ids: torch.Tensor | None = None) -> torch.Tensor:
    from ...data.tags import tag_query

    spec = self.fgir_vilt
    img = self.norm_pre(self.patch_drop(self._pos_embed(self.patch_embed(x))))
    if text_ids is None:
        text_ids = tag_query(x.shape[0], spec["max_len"], spec["vocab_size"], spec["query"], device=x.device)
    z = torch.cat([img, self.text_embed(text_ids)], dim=1)
    mask = None
    if spec.get("pad_mask"):  # B x 1 x 1 x (N + L_t), True = may be attended; [PAD] is tag id 0
        from ...data.tags import PAD

        visible = torch.cat([torch.ones_like(text_ids[:, :1]).expand(-1, img.shape[1]), text_ids != PAD], 1)
        mask = visible.bool()[:, None, None, :]
    for blk in self.blocks:
        z = blk(z) if mask is None else blk(z, attn_mask=mask)
    return self.norm(z)


def _forward_head(self: nn.Module, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
    # the backbone's own head (CLS token, or the mean of the image tokens) on the image part only
    return type(self).forward_head(self, x[:, : x.shape[1] - self.fgir_vilt["max_len"]], pre_logits=pre_logits)


def _forward(self: nn.Module, x: torch.Tensor, text_ids: torch.Tensor | None = None) -> torch.Tensor:
    return self.forward_head(self.forward_features(x, text_ids))


def _forward_tagging(self: nn.Module, x: torch.Tensor, text_ids: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(class logits B x K, token logits B x L_t x V)``."""
    if getattr(self, "mlm_head", None) is None:
        raise RuntimeError("vilt was applied with mlm: false; there is no MLM head for tagging.")
    z = self.forward_features(x, text_ids)
    return self.forward_head(z), self.mlm_head(z[:, -self.fgir_vilt["max_len"]:])


@register_plugin("vilt", ViLTConfig, families=("vit",))
def apply_vilt(model: nn.Module, cfg: ViLTConfig) -> nn.Module:
    """Add the tag embeddings (and the tied MLM head) to ``model`` (a timm ViT or ViTFS)."""
    check_vit(model, "vilt")
    if getattr(model, "token_path", None) is not None:
        raise ValueError("vilt does not compose with the token path plug-ins (ifa, clca, token_reduction); "
                         "list vilt alone.")
    v = _vocab_size(cfg)
    dim = model.embed_dim
    model.text_embed = TextEmbeddings(v, dim, cfg.max_len, cfg.type_vocab, cfg.dropout)
    model.mlm_head = MLMHead(dim, model.text_embed.word) if cfg.mlm else None
    model.fgir_vilt = {"max_len": int(cfg.max_len), "vocab_size": v, "query": cfg.query, "pad_mask": bool(cfg.pad_mask)}
    model.forward_features = types.MethodType(_forward_features, model)
    model.forward_head = types.MethodType(_forward_head, model)
    model.forward = types.MethodType(_forward, model)
    model.forward_tagging = types.MethodType(_forward_tagging, model)
    return model
