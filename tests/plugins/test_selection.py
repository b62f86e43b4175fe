"""DFSM selection baselines and the analytic Table-1 costs (shared/specs/glsim.md §11, checklist 15)."""

from __future__ import annotations

import pytest
import timm
import torch
from torch.testing import assert_close

from fgir.models.plugins.selection import (
    dfsm_cost,
    maws_indices,
    maws_scores,
    psm_indices,
    record_attention,
    rollout,
    rollout_scores,
    sequence_length,
    table1,
    vit_backbone_cost,
)


def tiny_vit():
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", img_size=64, depth=3, num_classes=4).eval()


def explicit_probs(model, x):
    """Reference: run timm's unfused path and read the softmax output entering attn_drop."""
    probs, hooks = [], []
    for blk in model.blocks:
        blk.attn.fused_attn = False
        hooks.append(blk.attn.attn_drop.register_forward_hook(lambda m, i, o: probs.append(i[0])))
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return probs


# ----------------------------------------------------------------------------- recording
def test_record_attention_works_with_fused_attention():
    model = tiny_vit()
    assert all(b.attn.fused_attn for b in model.blocks)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        plain = model(x)
        with record_attention(model) as rec:
            out = model(x)
    assert torch.equal(out, plain)  # recording does not change the model's output
    assert len(rec.scores) == 3 and rec.scores[0].shape == (2, 3, 17, 17)
    for got, ref in zip(rec.probs, explicit_probs(model, x)):
        assert_close(got, ref, rtol=1e-5, atol=1e-6)


def test_record_attention_subset_and_hooks_removed():
    model = tiny_vit()
    with torch.no_grad(), record_attention(model, blocks=[2]) as rec:
        model(torch.randn(1, 3, 64, 64))
    assert len(rec.scores) == 1
    assert all(not b.attn.q_norm._forward_hooks and not b.attn.k_norm._forward_hooks for b in model.blocks)


# ----------------------------------------------------------------------------- selectors
def test_rollout_of_identity_attention_is_identity():
    eye = torch.eye(5).expand(2, 3, 5, 5)
    assert_close(rollout([eye, eye]), torch.eye(5).expand(2, 5, 5))


def test_rollout_formula():
    torch.manual_seed(0)
    a = [torch.randn(2, 3, 5, 5).softmax(-1) for _ in range(3)]

    def norm(m):
        m = m.mean(1) + torch.eye(5)
        return m / m.sum(-1, keepdim=True)

    ref = norm(a[2]) @ norm(a[1]) @ norm(a[0])
    assert_close(rollout(a), ref)
    assert_close(rollout_scores(a), ref[:, 0, 1:])


def test_psm_picks_per_head_argmax_of_the_product():
    torch.manual_seed(0)
    a = [torch.randn(2, 3, 6, 6).softmax(-1) for _ in range(3)]
    prod = a[2] @ a[1] @ a[0]
    idx = psm_indices(a)
    assert idx.shape == (2, 3)
    assert torch.equal(idx, prod[:, :, 0, 1:].argmax(-1))


def test_maws_is_row_times_column_softmax():
    torch.manual_seed(0)
    s = torch.randn(2, 3, 6, 6)
    ref = s.softmax(-1)[:, :, 0, 1:].mean(1) * s.softmax(-2)[:, :, 1:, 0].mean(1)
    assert_close(maws_scores(s), ref)
    assert maws_indices([s, s], k=2).shape == (2, 2, 2)


def test_rollout_on_a_vit_selects_patches():
    model = tiny_vit()
    with torch.no_grad(), record_attention(model) as rec:
        model(torch.randn(2, 3, 64, 64))
    sc = rollout_scores(rec.probs)
    assert sc.shape == (2, 16) and torch.isfinite(sc).all()


# ----------------------------------------------------------------------------- 15 Table 1
def test_15_sequence_lengths():
    assert [sequence_length("glsim", s) for s in (224, 448, 768, 1024)] == [197, 785, 2305, 4097]
    assert [sequence_length("transfg", s) for s in (224, 448, 768, 1024)] == [325, 1370, 3970, 7226]


def test_15_backbone_cost():
    assert [round(vit_backbone_cost(s), 2) for s in (224, 448, 768, 1024)] == [17678.82, 78956.96, 296422.12,
                                                                              662197.94]


@pytest.mark.parametrize("method,values", [
    ("glsim", [0.4522, 1.8087, 5.3153, 9.4495]),
    ("ffvt", [0.1325, 0.5270, 1.5469, 2.7494]),
])
def test_15_small_costs(method, values):
    assert [round(dfsm_cost(method, s), 4) for s in (224, 448, 768, 1024)] == values


def test_15_costs_at_224():
    assert round(dfsm_cost("transfg", 224), 2) == 8226.08
    assert round(dfsm_cost("rollout", 224), 2) == 173.83
    assert round(dfsm_cost("aftrans", 224), 3) == 14.052
    assert round(dfsm_cost("ramstrans", 224), 2) == 174.29
    assert round(dfsm_cost("pim", 224), 2) == 121.04


def test_15_table1_percentages():
    rows = {(r["method"], r["img_size"]): r["pct_backbone"] for r in table1()}
    expect = {("transfg", 224): 46.531, ("rollout", 224): 0.9833, ("ffvt", 224): 0.0007, ("aftrans", 224): 0.0795,
              ("glsim", 224): 0.0026, ("transfg", 448): 781.31, ("rollout", 448): 13.592, ("aftrans", 448): 0.3162,
              ("glsim", 448): 0.0023, ("transfg", 768): 5065.4, ("rollout", 768): 91.152, ("glsim", 768): 0.0018,
              ("transfg", 1024): 13674, ("rollout", 1024): 228.84, ("aftrans", 1024): 1.0487,
              ("glsim", 1024): 0.0014}
    for k, v in expect.items():
        digits = max(0, len(str(v).split(".")[1]) if "." in str(v) else 0)
        assert round(rows[k], digits) == v, k


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="unknown DFSM"):
        dfsm_cost("psm")


def test_15_table1_printed_values_two_significant_digits():
    printed = {224: [8.2e3, 1.7e2, 1.3e-1, 1.4e1, 4.5e-1], 448: [6.2e5, 1.1e4, 5.3e-1, 2.5e2, 1.8e0],
               768: [1.5e7, 2.7e5, 1.5e0, 2.1e3, 5.3e0], 1024: [9.1e7, 1.5e6, 2.7e0, 6.9e3, 9.4e0]}
    for s, vals in printed.items():
        got = [dfsm_cost(m, s) for m in ("transfg", "rollout", "ffvt", "aftrans", "glsim")]
        assert [float(f"{v:.1e}") for v in got] == vals, s


def test_drain_probs_gives_the_same_maps_and_empties_the_record():
    from fgir.models.plugins.selection import AttentionRecord

    g = torch.Generator().manual_seed(0)
    rec = AttentionRecord([torch.randn(2, 3, 5, 5, generator=g) for _ in range(4)])
    ref = rec.probs
    drained = list(rec.drain_probs())
    assert rec.scores == [] and len(drained) == 4
    for a, b in zip(drained, ref):
        assert_close(a, b, atol=0, rtol=0)
