"""Every parameter / MAC count of spec evaluation.md §8 that the registry can build, in one table.

Models are built the way ``fgir cost`` and ``fgir bench`` build them (registry name + plug-in
entries -> :func:`fgir.engine.build.build_model`); parameters are counted on the meta device
(no memory, no initialisation), MACs with :func:`fgir.benchmarks.flops.count_macs` (torchprofile
conventions, batch 1, eval, attention counted). Tolerances follow §7: integers exact; GMACs
±0.01 G up to 224 px and ±0.05 G at 448 px for ViTs, ±0.5 % for CNNs and ViTFS.

Rows already asserted by another test are listed with that test (``ELSEWHERE``) instead of being
counted twice; a test checks each pointer still names an existing test. The default run counts
one MAC cell per architecture or plug-in family at its cheapest size (``DEFAULT_RUN``; every
parameter cell is counted, on the meta device); the other MAC cells (ViT-B at 448 px, ViT-L, the
remaining keep rates: about 2 minutes of one CPU thread together) are ``slow`` and run with
``FGIR_FULL_COUNTS=1`` (``FGIR_FULL_COUNTS=1 pytest tests/benchmarks/test_reference_counts.py``).
Not built here: TransFG (not in the registry) and the 8.2 TTP paper-convention cells (arithmetic).
"""

from __future__ import annotations

import itertools
import os
import re
from pathlib import Path
from typing import NamedTuple

import pytest
import torch

from fgir.benchmarks.cost import cost_config
from fgir.benchmarks.flops import count_macs, count_params
from fgir.engine.build import build_model

FULL = os.environ.get("FGIR_FULL_COUNTS", "") not in ("", "0")
TESTS = Path(__file__).resolve().parents[1]


class Ref(NamedTuple):
    id: str
    name: str
    size: int
    classes: int
    plugins: tuple = ()
    params: int | float | None = None  # int: exact; float: millions at the printed 3 decimals
    gmacs: float | None = None
    rel: bool = False  # GMACs within ±0.5 % (CNNs, ViTFS) instead of ±0.01 G / ±0.05 G
    tier: str = "full"  # fast / slow: in the default run; full: FGIR_FULL_COUNTS=1 only


def tr(kr: float) -> dict:
    return {"name": "token_reduction", "method": "evit", "keep_rate": kr, "locations": [3, 6, 9]}


CLCA = {"name": "clca"}
VIT_B = "vit_base_patch16_224"

# ---------------------------------------------------------------- §8.1 GLSim (C = 200) and §8.2 ILA (C = 200)
GLSIM_ILA = [
    Ref("8.1 GLSim 448", VIT_B, 448, 200, ({"name": "glsim"},), None, 157.036, tier="full"),
    Ref("8.1 GLSim no aggregator 224", VIT_B, 224, 200, ({"name": "glsim", "aggregator_depth": 0},), None, 35.134,
        tier="full"),
    Ref("8.1 GLSim no aggregator 448", VIT_B, 448, 200, ({"name": "glsim", "aggregator_depth": 0},), 86_404_808,
        157.021, tier="full"),
    Ref("8.1 ViT-B/16 224", VIT_B, 224, 200, (), None, 17.567, tier="full"),
    Ref("8.1 ViT-B/16 448", VIT_B, 448, 200, (), 86_404_040, 78.510, tier="full"),
    Ref("8.2 DS-only 224", VIT_B, 224, 200, ({"name": "ila", "variant": "ds_only"},), 85_992_952, 13.096, tier="full"),
    Ref("8.2 ILA+ 224", VIT_B, 224, 200, ({"name": "ila", "variant": "ila_plus"},), None, 13.114, tier="full"),
    Ref("8.2 ILA++ 224", VIT_B, 224, 200, ({"name": "ila", "variant": "ila_pp"},), None, 13.142, tier="full"),
    Ref("8.2 ConvPass 224", VIT_B, 224, 200, ({"name": "convpass"},), 86_280_008, 17.631, tier="full"),
    Ref("8.2 ADPT 224", VIT_B, 224, 200, ({"name": "adapter"},), 86_265_992, 17.629, tier="full"),
    Ref("8.2 VPT-S 224", VIT_B, 224, 200, ({"name": "vpt", "num_prompts": 100},), 86_029_256, 26.973, tier="full"),
    Ref("8.2 VPT-D 224", VIT_B, 224, 200, ({"name": "vpt", "num_prompts": 100, "deep": True},), 86_874_056, 26.973,
        tier="full"),
    Ref("8.2 DS-only 448", VIT_B, 448, 200, ({"name": "ila", "variant": "ds_only"},), None, 66.876, tier="full"),
    Ref("8.2 ILA+ 448", VIT_B, 448, 200, ({"name": "ila", "variant": "ila_plus"},), None, 66.959, tier="full"),
    Ref("8.2 ILA++ 448", VIT_B, 448, 200, ({"name": "ila", "variant": "ila_pp"},), None, 67.089, tier="full"),
    Ref("8.2 ConvPass 448", VIT_B, 448, 200, ({"name": "convpass"},), None, 78.766, tier="full"),
    Ref("8.2 ADPT 448", VIT_B, 448, 200, ({"name": "adapter"},), None, 78.756, tier="full"),
    Ref("8.2 VPT 448", VIT_B, 448, 200, ({"name": "vpt", "num_prompts": 100},), None, 90.083, tier="full"),
]

# ---------------------------------------------------------------- §8.3 CLCA (C = 1,110; EViT before blocks 4, 7, 10)
CLCA_GMACS = {  # backbone, size: no TR, then (kr, base, +CLCA) for kr 0.1 / 0.25 / 0.5 / 0.7
    ("vit_base_patch16_clip_224", 448): (78.52, (24.80, 25.18), (28.56, 28.99), (38.21, 38.77), (50.17, 50.86)),
    ("vit_base_patch16_clip_224", 224): (17.57, (5.64, 5.96), (6.53, 6.96), (8.82, 9.32), (11.61, 12.18)),
    ("deit3_base_patch16_224", 448): (78.53, (24.80, 25.18), (28.57, 29.00), (38.22, 38.78), (50.18, 50.87)),
    ("deit3_base_patch16_224", 224): (17.57, (5.64, 5.96), (6.53, 6.97), (8.82, 9.32), (11.62, 12.18)),
}
CLCA_PARAMS = {"deit3_base_patch16_224": (87_121_494, 87_985_494)}  # @448; CLIP's are asserted in test_clca.py
DONE_IN_TEST_CLCA = {"8.3 CLIP 224 no TR", "8.3 CLIP 224 kr 0.1 +CLCA"}


def _clca_rows() -> list[Ref]:
    rows = []
    for (name, size), (plain, *cells) in CLCA_GMACS.items():
        short = "CLIP" if "clip" in name else "DeiT3"
        tier = "full"
        p_plain, p_clca = CLCA_PARAMS.get(name, (None, None)) if size == 448 else (None, None)
        rows.append(Ref(f"8.3 {short} {size} no TR", name, size, 1110, (), p_plain, plain, tier=tier))
        for kr, (base, clca) in zip((0.1, 0.25, 0.5, 0.7), cells):
            rows.append(Ref(f"8.3 {short} {size} kr {kr}", name, size, 1110, (tr(kr),), p_plain if kr == 0.1 else None,
                            base, tier=tier))
            rows.append(Ref(f"8.3 {short} {size} kr {kr} +CLCA", name, size, 1110, (tr(kr), CLCA),
                            p_clca if kr == 0.1 else None, clca, tier=tier))
    return [r for r in rows if r.id not in DONE_IN_TEST_CLCA]


# ---------------------------------------------------------------- §8.4 TGDA (C = 200)
TGDA = [Ref(f"8.4 {name} {s}", name, s, 200, (), None, g, rel=True, tier="full")
        for name, cells in {"lrnet18": (2.9072, 11.6286), "lrnet26": (3.8333, 15.3321), "lrnet50": (6.2432, 24.9715)
                            }.items() for s, g in zip((224, 448), cells)]
TGDA += [Ref(f"8.4 {name} {s}", name, s, 200, (), params if s == 128 else None, g, rel=True,
             tier="full")
         for name, (params, cells) in {"resnet34": (21.387, (1.197, 3.667, 14.668)),
                                       "resnet50": (23.918, (1.339, 4.099, 16.393)),
                                       "resnet101": (42.910, (2.552, 7.816, 31.263))}.items()
         for s, g in zip((128, 224, 448), cells)]
TGDA += [Ref("8.4 resnet18 224", "resnet18", 224, 200, (), None, 1.816, rel=True),
         Ref("8.4 resnet18 448", "resnet18", 448, 200, (), None, 7.264, rel=True)]
TGDA += [Ref(f"8.4 ViTFS-{v[0].upper()} {s}", f"vitfs_{v}", s, 200, (), None, g, rel=True,
             tier="full")
         for v, cells in {"small": (1.6307, 5.0566, 24.2191), "base": (6.4228, 19.4448, 85.2550)}.items()
         for s, g in zip((128, 224, 448), cells)]
TGDA += [Ref("8.4 ViT-B/16 (IN-21k) 448", VIT_B, 448, 200, (), 86_404_040, 78.51, tier="full"),
         Ref("8.4 CAL ResNet-101 teacher 448", "resnet101", 448, 200, ({"name": "cal"},), None, 31.30, rel=True,
             tier="full")]

# ---------------------------------------------------------------- §8.5 DAF:re / Animesion (C = 3,263)
# Parameters: tests/models/test_animesion_models.py (see ELSEWHERE); the MAC cells are here.
ANIMESION = [Ref(f"8.5 {label} {s}", name, s, 3263, (), None, g, rel=name.startswith("resnet"))
             for label, name, cells in [("ViT B-16", "vit_base_patch16_224", (None, 17.569)),
                                        ("ViT B-32", "vit_base_patch32_224", (1.490, 4.412)),
                                        ("ViT L-16", "vit_large_patch16_224", (19.894, 61.567)),
                                        ("ViT L-32", "vit_large_patch32_224", (5.203, 15.382)),
                                        ("ResNet-18", "resnet18", (0.595, 1.818)),
                                        ("ResNet-50", "resnet50", (1.345, 4.105)),
                                        ("ResNet-152", "resnet152", (3.773, 11.541))]
             for s, g in zip((128, 224), cells) if g is not None]
ANIMESION += [Ref("8.5 ViT B-16 + IFA 224", "vit_base_patch16_224", 224, 3263, ({"name": "ifa"},), None, 17.569),
              Ref("8.5 ViT L-16 + IFA 128", "vit_large_patch16_224", 128, 3263, ({"name": "ifa"},), None, 19.894),
              Ref("8.5 ViT L-16 + IFA 224", "vit_large_patch16_224", 224, 3263, ({"name": "ifa"},), None, 61.567)]

# The default run counts one cell per architecture / plug-in family, at its cheapest size (about
# 15 s of one CPU thread); FGIR_FULL_COUNTS=1 counts every cell (about 2 minutes more).
DEFAULT_RUN = {"8.1 ViT-B/16 224": "slow", "8.2 ILA+ 224": "slow", "8.2 VPT-D 224": "slow",
               "8.3 CLIP 224 kr 0.7": "slow", "8.3 DeiT3 224 kr 0.1 +CLCA": "slow",
               "8.4 CAL ResNet-101 teacher 448": "slow",
               "8.4 lrnet18 224": "fast", "8.4 lrnet26 224": "fast", "8.4 resnet34 128": "fast",
               "8.4 resnet50 128": "fast", "8.4 resnet101 128": "fast", "8.4 ViTFS-S 128": "fast",
               "8.5 ViT B-32 128": "fast", "8.5 ResNet-18 128": "fast"}
TABLE = [r._replace(tier=DEFAULT_RUN.get(r.id, "full")) for r in GLSIM_ILA + _clca_rows() + TGDA + ANIMESION]

# Cells of §8 asserted by a test elsewhere (row -> "file::test"); they are not repeated above.
ELSEWHERE = {
    "8.1 GLSim 224 (params, GMACs), 448 and no-aggregator 224 (params), aggregator / LN params":
        "plugins/test_glsim.py::test_12_vit_b_parameter_count, test_13_vit_b_macs_224, "
        "test_12_without_aggregator_count, test_11_aggregator_counts_vit_b",
    "8.1 Table 1 analytic costs": "plugins/test_selection.py::test_15_backbone_cost, test_15_small_costs, "
                                  "test_15_costs_at_224",
    "8.2 adapter parameters, non-head trainable per task, totals @224":
        "plugins/test_ila.py::test_item01_plain_ila_has_13336_and_ds_ila_20248_parameters, "
        "plugins/test_peft.py::test_item10_non_head_trainable_per_task_on_vit_b16, "
        "test_item11_total_parameters_with_200_classes_at_224",
    "8.2 TTP": "plugins/test_peft.py::test_item13_ttp_helper_for_ila_pp",
    "8.3 CLA head parameters, CLCA delta, CLIP @448 parameters (+CLCA)":
        "plugins/test_clca.py::test_item8_cla_parameters, test_item10_clip_448_totals",
    "8.3 CLIP 224 no TR exact, CLIP 224 kr 0.1 + CLCA": "plugins/test_clca.py::test_item21_plain_clip_224_macs_exact, "
                                                         "test_item22_evit_clca_224_macs_match_reference",
    "8.4 LRN14-50 params and GMACs @128, LRN14 @224/448": "models/test_lrnet.py::test_params_and_macs_at_128, "
                                                         "test_lrnet14_macs_scale_with_area",
    "8.4 ResNet-18 params and GMACs @128": "benchmarks/test_flops.py::test_resnet18_at_128_with_200_classes",
    "8.4 ViTFS params, N/M/T GMACs, paper cells without attention":
        "models/test_vitfs.py::test_params_exact, test_macs_full_count, test_macs_without_attention_matmuls",
    "8.4 DeiT-T/S/B @448": "benchmarks/test_flops.py::test_deit_at_448_matches_paper",
    "8.4 CAL teacher parameters": "plugins/test_cal.py::test_param_census_resnet101_teacher_k200",
    "8.5 every parameter cell, ViT B-16 (+ IFA) GMACs @128, Shallow CNN GMACs":
        "models/test_animesion_models.py::test_param_counts_match_reference, test_vit_b16_128_macs, "
        "test_vit_b16_128_ifa_macs, test_shallow_macs_at_224",
}


def _build(row: Ref, meta: bool) -> torch.nn.Module:
    """The registry model of ``row``; ``meta=False`` materialises it on the CPU with constant
    weights instead of running the initialisers (seconds for ViT-L; counts depend on shapes only,
    and no row of the table has a data-dependent token count)."""
    cfg = cost_config(row.name, row.size, plugins=[dict(p) for p in row.plugins])
    with torch.device("meta"):
        model = build_model(cfg, row.classes)
    if meta:
        return model
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        for t in itertools.chain(model.parameters(), model.buffers()):
            t.fill_(0.01) if t.is_floating_point() else t.zero_()
    return model


def _param(row: Ref):
    marks = [pytest.mark.slow] if row.tier != "fast" else []
    if row.tier == "full":
        marks.append(pytest.mark.skipif(not FULL, reason="full table only (minutes of CPU): set FGIR_FULL_COUNTS=1"))
    return pytest.param(row, id=row.id.replace(" ", "_"), marks=marks)


@pytest.mark.parametrize("row", [pytest.param(r, id=r.id.replace(" ", "_")) for r in TABLE if r.params is not None])
def test_reference_parameter_count(row: Ref):
    got = count_params(_build(row, meta=True))
    assert (got if isinstance(row.params, int) else round(got / 1e6, 3)) == row.params


@pytest.mark.parametrize("row", [_param(r) for r in TABLE if r.gmacs is not None])
def test_reference_mac_count(row: Ref):
    got = count_macs(_build(row, meta=False), row.size) / 1e9
    if row.rel:
        assert got == pytest.approx(row.gmacs, rel=0.005)
    else:
        assert abs(got - row.gmacs) <= (0.05 if row.size > 224 else 0.01), f"{got:.4f} G vs {row.gmacs} G"


def test_rows_covered_elsewhere_point_at_existing_tests():
    for cells, where in ELSEWHERE.items():
        path = ""
        for item in (n.strip() for n in where.split(",")):
            if "::" in item:  # a file, then test names in it
                path, item = item.split("::")
            source = (TESTS / path).read_text()
            assert re.search(rf"^def {re.escape(item)}\(", source, re.M), f"{cells}: {path}::{item} not found"
