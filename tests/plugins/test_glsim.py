"""GLSim plug-in (arXiv 2407.12891): tests named after the conformance checklist of shared/specs/glsim.md."""

from __future__ import annotations

import warnings

import pytest
import timm
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from fgir.benchmarks.flops import count_macs, count_params
from fgir.config import ConfigError, load_config
from fgir.engine.build import build_model
from fgir.engine.classification import ClassificationTask
from fgir.models import create_model
from fgir.models.plugins import apply_plugins, get_inference, inference_names
from fgir.models.plugins.glsim import (
    GLSimConfig,
    GLSimModel,
    apply_glsim,
    crop_boxes,
    crop_resize,
    crop_resize_loop,
    gls_scores,
    mark_only_glsim_trainable,
    resolve_top_o,
    select_top_o,
)


def tiny_vit(num_classes: int = 5, img_size: int = 64, **kw):
    kw = {"depth": 2, **kw}
    return timm.create_model("vit_tiny_patch16_224", img_size=img_size, num_classes=num_classes, **kw)


def tiny_glsim(seed: int = 0, **cfg) -> GLSimModel:
    torch.manual_seed(seed)
    return apply_glsim(tiny_vit(), GLSimConfig(**{"top_o": 4, **cfg}))


def box(idx, g, p, s, rule="reference"):
    return crop_boxes(torch.tensor([idx]), g, p, s, rule)[0].tolist()


# ----------------------------------------------------------------------------- 1-2 GLS and top-O
def test_01_gls_is_cosine_of_cls_and_patches():
    h = torch.randn(3, 17, 8)
    s = gls_scores(h[:, 0], h[:, 1:])
    assert s.shape == (3, 16)
    assert_close(s, F.cosine_similarity(h[:, :1], h[:, 1:], dim=-1, eps=1e-8), rtol=0, atol=0)


@pytest.mark.parametrize("metric", ["l1", "l2"])
def test_01_distance_metrics_select_the_smallest(metric):
    g = torch.zeros(1, 4)
    local = torch.stack([torch.full((4,), v) for v in (3.0, 0.1, 2.0, 0.2, 5.0)])[None]
    d = gls_scores(g, local, metric)
    ref = local.abs().mean(-1) if metric == "l1" else local.pow(2).mean(-1)
    assert_close(d, ref)
    model = tiny_glsim(sim_metric=metric, top_o=2)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        out = model.eval().forward_glsim(x)
    assert set(out["indices"][0].tolist()) == set(out["gls"][0].topk(2, largest=False).indices.tolist())


def test_02_top_o_returns_the_chosen_set():
    d, chosen = 16, [2, 7, 11]
    h = torch.zeros(1, 1 + 12, d)
    h[0, 0, 0] = 1.0  # CLS = e0
    for j in range(12):
        h[0, 1 + j, 1 + j] = 1.0  # others orthogonal
    for k, j in enumerate(chosen):
        h[0, 1 + j] = (2.0 + k) * F.one_hot(torch.tensor(0), d).float()
    idx = select_top_o(gls_scores(h[:, 0], h[:, 1:]), 3)
    assert sorted(idx[0].tolist()) == chosen


def test_random_anchor_ablation_draws_valid_indices():
    model = tiny_glsim(sim_metric="random").eval()
    with torch.no_grad():
        out = model.forward_glsim(torch.randn(3, 3, 64, 64))
    assert out["indices"].shape == (3, 4) and ((0 <= out["indices"]) & (out["indices"] < 16)).all()


def test_top_o_larger_than_the_grid_is_refused():
    with pytest.raises(ValueError, match="top_o=5"):
        select_top_o(torch.randn(1, 4), 5)


# ----------------------------------------------------------------------------- 3-6 box rule
def test_03_reference_box_worked_example_224():
    assert box([16, 17, 30, 31, 44, 45, 58, 60], 14, 16, 224) == [16, 64, 32, 64]
    assert box([16, 17, 30, 31, 44, 45, 58, 60], 14, 16, 224, "inclusive") == [16, 80, 32, 80]


def test_04_reference_and_inclusive_box_64():
    assert box([5, 6, 7], 4, 16, 64) == [16, 32, 16, 48]
    assert box([5, 6, 7], 4, 16, 64, "inclusive") == [16, 32, 16, 64]


@pytest.mark.parametrize("rule", ["reference", "inclusive"])
def test_05_single_index_box_is_its_patch(rule):
    g, p = 14, 16
    for i in (0, 13, 97, 195):
        r, c = i // g, i % g
        assert box([i], g, p, 224, rule) == [p * r, p * r + p, p * c, p * c + p]


def test_paper_figure_example_reference_keeps_only_patch_1():
    # 3x3 grid, patches 1, 2, 4 (1-based) -> flat 0, 1, 3
    assert box([0, 1, 3], 3, 16, 48) == [0, 16, 0, 16]
    assert box([0, 1, 3], 3, 16, 48, "inclusive") == [0, 32, 0, 32]


@pytest.mark.parametrize("rule", ["reference", "inclusive"])
def test_06_boxes_inside_the_image_and_patch_aligned(rule):
    gen = torch.Generator().manual_seed(0)
    g, p, s = 14, 16, 224
    idx = torch.stack([torch.randperm(g * g, generator=gen)[:8] for _ in range(64)])
    b = crop_boxes(idx, g, p, s, rule)
    y0, y1, x0, x1 = b.unbind(1)
    assert ((0 <= y0) & (y0 < y1) & (y1 <= s) & (0 <= x0) & (x0 < x1) & (x1 <= s)).all()
    assert ((y1 - y0) % p == 0).all() and ((x1 - x0) % p == 0).all()


def test_box_is_centred_on_the_top_similarity_patches_of_a_synthetic_map():
    # a 8x8 grid whose patches in rows 2-4, cols 5-6 look like the CLS token
    g, d = 8, 32
    torch.manual_seed(0)
    cls = torch.randn(d)
    local = torch.randn(g * g, d) * 0.1
    hot = [r * g + c for r in (2, 3, 4) for c in (5, 6)]
    local[hot] = cls + 0.01 * torch.randn(len(hot), d)
    idx = select_top_o(gls_scores(cls[None], local[None]), len(hot))
    assert sorted(idx[0].tolist()) == sorted(hot)
    y0, y1, x0, x1 = crop_boxes(idx, g, 16, 128, "inclusive")[0].tolist()
    assert (y0, y1, x0, x1) == (32, 80, 80, 112)
    assert crop_boxes(idx, g, 16, 128)[0].tolist() == [32, 64, 80, 96]  # reference: last row/col cut


# ----------------------------------------------------------------------------- 7 crop
def test_07_crop_equals_interpolate_of_the_slice():
    img = torch.randn(1, 3, 64, 64)
    b = torch.tensor([[16, 48, 0, 32]])
    ref = F.interpolate(img[:, :, 16:48, 0:32], (64, 64), mode="bilinear", align_corners=True)
    assert_close(crop_resize_loop(img, b), ref, rtol=0, atol=0)
    assert_close(crop_resize(img, b), ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("s", [64, 224])
def test_07_batched_crop_matches_the_loop(s):
    gen = torch.Generator().manual_seed(1)
    g = s // 16
    images = torch.randn(6, 3, s, s, generator=gen)
    idx = torch.stack([torch.randperm(g * g, generator=gen)[:3] for _ in range(6)])
    for rule in ("reference", "inclusive"):
        b = crop_boxes(idx, g, 16, s, rule)
        assert_close(crop_resize(images, b), crop_resize_loop(images, b), rtol=0, atol=1e-5)


def test_07_model_batched_and_loop_crops_agree():
    x = torch.randn(3, 3, 64, 64)
    a, b = tiny_glsim(head_init="default").eval(), tiny_glsim(head_init="default", crop_impl="loop").eval()
    with torch.no_grad():
        oa, ob = a.forward_glsim(x), b.forward_glsim(x)
    assert torch.equal(oa["boxes"], ob["boxes"])
    assert_close(oa["crops"], ob["crops"], rtol=0, atol=1e-5)
    assert_close(oa["logits"], ob["logits"], rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- 8-10 forward, gradients, sharing
def test_08_outputs_and_zero_head_logits():
    model = tiny_glsim().eval()
    with torch.no_grad():
        out = model.forward_glsim(torch.randn(2, 3, 64, 64))
    assert out["logits"].shape == (2, 5) and out["crops"].shape == (2, 3, 64, 64)
    assert out["boxes"].shape == (2, 4) and out["boxes"].dtype == torch.long
    assert out["gls"].shape == (2, 16) and out["indices"].shape == (2, 4)
    assert all(torch.isfinite(v.float()).all() for v in out.values())
    assert torch.equal(out["logits"], torch.zeros(2, 5))


def test_09_selection_carries_no_gradient():
    model = tiny_glsim(head_init="default").train()
    out = model.forward_glsim(torch.randn(2, 3, 64, 64))
    assert not out["crops"].requires_grad and not out["gls"].requires_grad
    assert out["logits"].requires_grad


def test_09_gradient_census_random_head():
    model = tiny_glsim(head_init="default").train()
    model.forward_glsim(torch.randn(2, 3, 64, 64))["logits"].pow(2).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []
    assert model.crop_cls_token.grad.abs().sum() > 0


def test_09_gradient_census_zero_head_only_head():
    model = tiny_glsim().train()
    F.cross_entropy(model(torch.randn(2, 3, 64, 64)), torch.tensor([0, 1])).backward()
    moved = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert moved == {"head.weight", "head.bias"}


def test_10_second_pass_shares_the_encoder():
    model = tiny_glsim().eval()
    calls = []
    model.backbone.blocks[0].register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        model(torch.randn(2, 3, 64, 64))
    assert len(calls) == 2
    plain = count_params(tiny_vit(num_classes=0))
    added = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("backbone."))
    assert count_params(model) == plain + added
    assert {n.split(".")[0] for n, _ in model.named_parameters()} == {"backbone", "crop_cls_token", "aggregator",
                                                                      "aggregator_norm", "head"}


def test_separate_crop_cls_is_used_in_the_second_pass_only():
    model = tiny_glsim(head_init="default").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
        model.crop_cls_token.add_(1.0)
        after = model(x)
        assert torch.equal(model.backbone.cls_token, tiny_glsim(head_init="default").backbone.cls_token)
    assert not torch.equal(before, after)
    assert isinstance(model.backbone.cls_token, torch.nn.Parameter) and model.backbone.cls_token is not \
        model.crop_cls_token


# ----------------------------------------------------------------------------- 11-14 counts and presets
def test_11_aggregator_counts_vit_b():
    with torch.device("meta"):
        model = apply_glsim(timm.create_model("vit_base_patch16_224", num_classes=200), GLSimConfig())
    assert count_params(model.aggregator) == 7_087_872
    assert count_params(model.aggregator_norm) == 1_536


@pytest.mark.parametrize("size,crop_cls,expected", [(224, "separate", 93_042_632), (448, "separate", 93_494_216),
                                                    (224, "shared", 93_041_864)])
def test_12_vit_b_parameter_count(size, crop_cls, expected):
    with torch.device("meta"):
        vit = timm.create_model("vit_base_patch16_224", img_size=size, num_classes=200)
        model = apply_glsim(vit, GLSimConfig(crop_cls=crop_cls))
    assert count_params(model) == expected


def test_12_without_aggregator_count():
    with torch.device("meta"):
        model = apply_glsim(timm.create_model("vit_base_patch16_224", num_classes=200),
                            GLSimConfig(aggregator_depth=0))
    assert count_params(model) == 85_953_224


def test_13_vit_b_macs_224():
    # reference 35.149 G (torchprofile on the legacy model); timm's q-scaling adds L·N·D per pass
    model = apply_glsim(timm.create_model("vit_base_patch16_224", num_classes=200), GLSimConfig())
    assert abs(count_macs(model, 224) / 1e9 - 35.149) <= 0.01


def test_13_tiny_macs_are_two_passes_plus_aggregator():
    model = tiny_glsim()
    plain = count_macs(tiny_vit(num_classes=5), 64)
    ratio = count_macs(model, 64) / plain
    assert 2.0 < ratio < 2.2


def test_14_parity_top_o():
    cfg = GLSimConfig()
    for ds, s, o in (("cub", 224, 8), ("cub", 448, 8), ("dogs", 224, 16), ("dogs", 448, 16)):
        cfg.dataset = ds
        assert resolve_top_o(cfg, s) == o
    cfg = GLSimConfig(top_o_double_at_448=True, dataset="cub")
    assert (resolve_top_o(cfg, 224), resolve_top_o(cfg, 448)) == (8, 16)


def test_14_dataset_comes_from_the_config():
    cfg = load_config(overrides=["data.name=dogs", "model.plugins=[{name: glsim}]"])
    assert cfg.model.plugins[0].dataset == "dogs" and resolve_top_o(cfg.model.plugins[0], 224) == 16


def test_bad_choice_is_a_config_error():
    with pytest.raises(ConfigError, match="crop_box"):
        load_config(overrides=["model.plugins=[{name: glsim, crop_box: inclusiv}]"])


# ----------------------------------------------------------------------------- 16-17 independence, determinism
def test_16_batch_independence():
    model = tiny_glsim(head_init="default").eval()
    torch.manual_seed(3)
    x0, x1, x2 = torch.randn(3, 1, 3, 64, 64).unbind(0)
    with torch.no_grad():
        a = model.forward_glsim(torch.cat([x0, x1]))
        b = model.forward_glsim(torch.cat([x0, x2]))
    assert torch.equal(a["boxes"][0], b["boxes"][0])
    assert_close(a["logits"][0], b["logits"][0], rtol=0, atol=1e-6)


def test_17_eval_is_deterministic():
    model = tiny_glsim(head_init="default").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        a, b = model.forward_glsim(x), model.forward_glsim(x)
    assert torch.equal(a["logits"], b["logits"]) and torch.equal(a["boxes"], b["boxes"])


def test_17_save_load_identical(tmp_path):
    model = tiny_glsim(head_init="default").eval()
    torch.save(model.state_dict(), tmp_path / "m.pt")
    other = tiny_glsim(seed=1, head_init="default").eval()
    other.load_state_dict(torch.load(tmp_path / "m.pt"))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert_close(other(x), model(x), rtol=0, atol=0)


# ----------------------------------------------------------------------------- 18 golden re-implementation
def test_18_matches_a_step_by_step_reimplementation():
    torch.manual_seed(0)
    vit = tiny_vit(img_size=64, embed_dim=64, num_heads=1, depth=2)
    model = apply_glsim(vit, GLSimConfig(top_o=2, crop_cls="shared", head_init="default")).eval()
    x = torch.randn(3, 3, 64, 64)
    s, p, g, o = 64, 16, 4, 2

    def encode(img):
        t = vit.patch_embed(img)
        t = torch.cat([vit.cls_token.expand(img.shape[0], -1, -1), t], dim=1) + vit.pos_embed
        for blk in vit.blocks:
            t = blk(t)
        return vit.norm(t)

    with torch.no_grad():
        h = encode(x)
        crops = []
        for b in range(3):
            sim = F.cosine_similarity(h[b, :1], h[b, 1:], dim=-1)
            idx = sim.topk(o).indices
            r, c = idx // g, idx % g
            top, bottom, left, right = p * int(r.min()), p * int(r.max()), p * int(c.min()), p * int(c.max())
            y0, y1 = max(top, 0), min(max(bottom, top + p), s)
            x0, x1 = max(left, 0), min(max(right, left + p), s)
            crops.append(F.interpolate(x[b:b + 1, :, y0:y1, x0:x1], (s, s), mode="bilinear", align_corners=True))
        hc = encode(torch.cat(crops))
        z = torch.cat([h, hc], dim=1).view(3, 2, 1 + g * g, 64)[:, :, 0]
        z = model.aggregator_norm(model.aggregator(z))
        ref = model.head(z[:, 0])
        got = model(x)
    assert_close(got, ref, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- 19-20 loss and training
def test_19_loss_is_plain_cross_entropy():
    model = tiny_glsim(head_init="default").train()
    batch = {"image": torch.randn(2, 3, 64, 64), "target": torch.tensor([1, 3])}
    for ls in (0.0, 0.1):
        torch.manual_seed(5)
        out = ClassificationTask(model, label_smoothing=ls)(batch)
        assert set(out) == {"loss", "logits"}
        assert_close(out["loss"], F.cross_entropy(out["logits"], batch["target"], label_smoothing=ls))


def test_20_one_sgd_step_lowers_the_loss():
    model = tiny_glsim(head_init="default").eval()  # eval: no dropout, loss comparable
    x, y = torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 3])
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loss0 = F.cross_entropy(model(x), y)
    loss0.backward()
    opt.step()
    with torch.no_grad():
        assert F.cross_entropy(model(x), y) < loss0


# ----------------------------------------------------------------------------- plug-in layer
def test_config_entry_builds_glsim_with_no_crop_variant():
    cfg = load_config(overrides=["model.name=vit_tiny_patch16_224", "data.img_size=64", "model.kwargs={depth: 2}",
                                 "model.plugins=[{name: glsim, top_o: 4}]"])
    model = build_model(cfg, 3).eval()
    assert isinstance(model, GLSimModel) and model.fgir_plugins == ["glsim"]
    assert "no-crop" in inference_names(model)
    calls = []
    model.backbone.blocks[0].register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        out = get_inference(model, "no-crop")(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 3) and len(calls) == 1


def test_applying_twice_raises():
    entry = GLSimConfig(top_o=4)
    model = apply_plugins(tiny_vit(), [entry])
    with pytest.raises(ValueError, match="already applied"):
        apply_plugins(model, [entry])


def test_cnn_backbone_is_refused():
    with pytest.raises(TypeError, match="token model"):
        apply_glsim(create_model("test_resnet", num_classes=3), GLSimConfig())


def test_mark_only_glsim_trainable():
    model = apply_plugins(tiny_vit(), [GLSimConfig(top_o=4)])
    mark_only_glsim_trainable(model)
    train = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert train == {"crop_cls_token", "aggregator", "aggregator_norm", "head"}


def test_batched_path_traces_and_generalises():
    model = tiny_glsim(head_init="default").eval()
    x1, x2 = torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        traced = torch.jit.trace(model, x1, check_trace=False)
        assert_close(traced(x2), model(x2), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- ViTFS (GAP, registers)
def test_vitfs_gap_registers_shared_crop_cls():
    torch.manual_seed(0)
    model = apply_glsim(create_model("vitfs_nano", num_classes=5),
                        GLSimConfig(top_o=4, crop_cls="shared", head_init="default")).eval()
    assert model.num_prefix_tokens == 4
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = model.forward_glsim(x)
        h = model.backbone.forward_features(x)
    assert out["gls"].shape == (2, 16) and out["logits"].shape == (2, 5)
    # global vector = the mean of the normalised patch tokens (the GAP pre-logits)
    assert_close(out["gls"], F.cosine_similarity(h[:, 4:].mean(1, keepdim=True), h[:, 4:], dim=-1))


def test_gap_backbone_warns_that_selection_is_background_prone():
    with pytest.warns(UserWarning, match="no class token"):
        apply_glsim(create_model("vitfs_nano", num_classes=5), GLSimConfig(top_o=4))


def test_cls_backbone_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        apply_glsim(tiny_vit(), GLSimConfig(top_o=4))


def test_vitfs_separate_crop_cls_is_refused():
    with pytest.raises(ValueError, match="crop_cls: shared"):
        apply_glsim(create_model("vitfs_nano", num_classes=5), GLSimConfig(top_o=4, crop_cls="separate"))


def test_auto_crop_cls_is_shared_without_a_class_token_and_separate_with_one():
    vitfs = apply_glsim(create_model("vitfs_nano", num_classes=5), GLSimConfig(top_o=4))
    assert vitfs.crop_cls_token is None
    vit = apply_glsim(create_model("vit_tiny_patch16_224", img_size=64, depth=2, num_classes=5), GLSimConfig(top_o=4))
    assert isinstance(vit.crop_cls_token, torch.nn.Parameter)


# ----------------------------------------------------------------------------- mode: select_top_k (timm-path extra)
def test_select_top_k_matches_a_step_by_step_reimplementation():
    torch.manual_seed(0)
    vit = tiny_vit(img_size=64, embed_dim=64, num_heads=1, depth=2)
    model = apply_glsim(vit, GLSimConfig(top_o=3, mode="select_top_k", head_init="default")).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        h = vit.forward_features(x)
        idx = F.cosine_similarity(h[:, :1], h[:, 1:], dim=-1).topk(3, dim=1).indices
        z = torch.cat([h[:, :1], torch.stack([h[b, 1:][idx[b]] for b in range(2)])], dim=1)
        ref = model.head(model.aggregator_norm(model.aggregator(z))[:, 0])
        got = model.forward_glsim(x)
    assert_close(got["logits"], ref, rtol=1e-5, atol=1e-5)
    assert got["crops"] is None and got["boxes"].shape == (2, 4)


def test_select_top_k_runs_the_encoder_once():
    one = count_macs(tiny_glsim(mode="select_top_k"), 64)
    plain = count_macs(tiny_vit(num_classes=5), 64)
    assert 1.0 < one / plain < 1.2


def test_select_top_k_selected_tokens_get_a_gradient():
    model = tiny_glsim(mode="select_top_k", head_init="default").train()
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    assert model.backbone.blocks[-1].mlp.fc2.weight.grad.abs().sum() > 0


def test_select_top_k_without_aggregator_is_a_config_error():
    with pytest.raises(ConfigError, match="aggregator_depth"):
        load_config(overrides=["model.name=vit_tiny_patch16_224",
                               "model.plugins=[{name: glsim, mode: select_top_k, aggregator_depth: 0}]"]).validate()


def test_select_top_k_allocates_no_crop_cls_token():
    assert tiny_glsim(mode="select_top_k").crop_cls_token is None
    with pytest.raises(ValueError, match="unused"):
        tiny_glsim(mode="select_top_k", crop_cls="separate")


# ----------------------------------------------------------------------------- sim_metric: rollout (ablation)
def test_rollout_selects_the_top_o_of_the_first_pass_rollout():
    from fgir.models.plugins.selection import record_attention, rollout_scores

    model = tiny_glsim(sim_metric="rollout").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        with record_attention(model.backbone) as rec:
            model.backbone.forward_features(x)
        expect = rollout_scores(rec.probs, 1).topk(4, dim=1).indices.sort(dim=1).values
        out = model.forward_glsim(x)
    assert torch.equal(out["indices"].sort(dim=1).values, expect)
    assert_close(out["gls"], rollout_scores(rec.probs, 1), atol=1e-6, rtol=1e-6)


def test_rollout_leaves_the_logits_path_unchanged_but_the_crop():
    # same weights, same boxes -> same logits: the selector only changes which box is cropped
    torch.manual_seed(0)
    a = tiny_glsim(sim_metric="rollout", head_init="default").eval()
    b = tiny_glsim(head_init="default").eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        boxes = a.forward_glsim(x)["boxes"]
        h = b.backbone.forward_features(x)
        with b._crop_cls():
            hc = b.backbone.forward_features(crop_resize(x, boxes))
        z = torch.stack([b.backbone.forward_head(h, pre_logits=True), b.backbone.forward_head(hc, pre_logits=True)], 1)
        assert_close(a(x), b.forward_head(b._aggregate(z)), atol=1e-5, rtol=1e-5)


def test_rollout_on_a_backbone_without_class_token_is_refused():
    with pytest.raises(ValueError, match="no class token"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        apply_glsim(create_model("vitfs_nano", num_classes=5), GLSimConfig(top_o=4, sim_metric="rollout"))


def test_forward_intermediates_are_the_first_pass_encoders():
    m = tiny_glsim().eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        final, inter = m.forward_intermediates(x, indices=2)
        ref_final, ref_inter = m.backbone.forward_intermediates(x, indices=2)
    assert len(inter) == 2
    assert_close(final, ref_final, atol=0, rtol=0)
    for a, b in zip(inter, ref_inter):
        assert_close(a, b, atol=0, rtol=0)
    assert_close(final, m.backbone.forward_features(x), atol=1e-6, rtol=1e-5)
