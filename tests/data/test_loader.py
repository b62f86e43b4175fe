import numpy as np
import pytest
import torch
from PIL import Image

from fgir.data.datasets import ImageReadError, ManifestDataset, decoded_cache
from fgir.data.loader import ArrayLoader, DecodeLoader, epoch_indices
from fgir.data.manifest import ManifestError, Row, write_split
from fgir.data.transforms import BatchTransform, normalize


def test_epoch_indices_shard_union_is_single_process_batch():
    one = epoch_indices(20, 3, 0, True, 0, 1, True, 4)
    r0 = epoch_indices(20, 3, 0, True, 0, 2, True, 4)
    r1 = epoch_indices(20, 3, 0, True, 1, 2, True, 4)
    for k in range(len(r0) // 2):
        union = set(r0[2 * k:2 * k + 2].tolist()) | set(r1[2 * k:2 * k + 2].tolist())
        assert set(one[4 * k:4 * k + 4].tolist()) == union


def test_eval_transform_is_centre_crop_then_normalise():
    x = torch.randint(0, 256, (2, 3, 10, 10), dtype=torch.uint8)
    tf = BatchTransform(6, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    torch.testing.assert_close(tf(x), normalize(x[..., 2:8, 2:8], (0.5,) * 3, (0.5,) * 3), rtol=0, atol=0)


def test_train_transform_output_shape_and_determinism():
    x = torch.randint(0, 256, (5, 3, 12, 12), dtype=torch.uint8)
    tf = BatchTransform(8, train=True, auto_augment="rand-m9-n2", crop="rrc")
    torch.manual_seed(1)
    a = tf(x, torch.Generator().manual_seed(3))
    torch.manual_seed(1)
    b = tf(x, torch.Generator().manual_seed(3))
    assert a.shape == (5, 3, 8, 8)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_random_crop_takes_a_window_of_the_image():
    x = torch.arange(2 * 3 * 9 * 9, dtype=torch.float32).reshape(2, 3, 9, 9).to(torch.uint8)
    tf = BatchTransform(4, mean=(0, 0, 0), std=(1 / 255,) * 3, train=True, hflip=False)
    out = tf(x, torch.Generator().manual_seed(0))
    for i in range(2):
        found = any(torch.equal(out[i], x[i, :, r:r + 4, c:c + 4].float()) for r in range(6) for c in range(6))
        assert found


def test_unknown_auto_augment_is_an_error():
    with pytest.raises(ValueError, match="data.auto_augment"):
        BatchTransform(8, train=True, auto_augment="randaug")


def test_cache_is_reused(tiny_root, tmp_path):
    ds = ManifestDataset("tiny", "val", str(tiny_root))
    a, keep = decoded_cache(ds, 16, str(tmp_path), progress=False)
    assert a.shape == (len(ds), 16, 16, 3) and len(keep) == len(ds)
    files = sorted(tmp_path.iterdir())
    b, _ = decoded_cache(ds, 16, str(tmp_path), progress=False)
    assert sorted(tmp_path.iterdir()) == files
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_loader_batches_cover_split(tiny_root, tmp_path):
    ds = ManifestDataset("tiny", "test", str(tiny_root))
    ld = ArrayLoader(ds, BatchTransform(16), batch_size=4, stored=16, shuffle=False, drop_last=False,
                     cache_dir=str(tmp_path), progress=False)
    seen = torch.cat([b["index"] for b in ld])
    assert sorted(seen.tolist()) == list(range(len(ds)))


def _copy_tiny(tiny_root, tmp_path, rows):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(tiny_root, root)
    write_split(root / "test.csv", rows)
    return root


def test_missing_image_is_named(tiny_root, tmp_path):
    root = _copy_tiny(tiny_root, tmp_path, [Row(0, "red_disc/nope.png"), Row(1, "green_square/test_000.png")])
    with pytest.raises(ManifestError, match=r"1 of 2 images .*red_disc/nope.png"):
        ManifestDataset("tiny", "test", str(root))


def test_class_id_outside_table_is_an_error(tiny_root, tmp_path):
    root = _copy_tiny(tiny_root, tmp_path, [Row(7, "red_disc/test_000.png")])
    with pytest.raises(ManifestError, match=r"outside the class table \[0, 2\]"):
        ManifestDataset("tiny", "test", str(root))


def test_truncated_image_named_or_skipped(tiny_root, tmp_path):
    root = _copy_tiny(tiny_root, tmp_path, [Row(0, "red_disc/test_000.png"), Row(0, "red_disc/bad.png")])
    good = (root / "images/red_disc/test_000.png").read_bytes()
    (root / "images/red_disc/bad.png").write_bytes(good[: len(good) // 3])
    ds = ManifestDataset("tiny", "test", str(root))
    with pytest.raises(ImageReadError, match="bad.png"):
        decoded_cache(ds, 16, str(tmp_path / "c1"), progress=False)
    with pytest.warns(UserWarning, match="Skipping 1 unreadable"):
        _, keep = decoded_cache(ds, 16, str(tmp_path / "c2"), skip_bad=True, progress=False)
    assert keep.tolist() == [0]


def test_missing_split_lists_available(tiny_root):
    with pytest.raises(ManifestError, match="no split 'holdout'.*available"):
        ManifestDataset("tiny", "holdout", str(tiny_root))


def test_num_classes_comes_from_class_table(tiny_root, tmp_path):
    root = _copy_tiny(tiny_root, tmp_path, [Row(0, "red_disc/test_000.png")])
    assert ManifestDataset("tiny", "test", str(root)).num_classes == 3


def test_rgba_png_is_composited_on_white(tmp_path):
    from fgir.data.datasets import read_image

    p = tmp_path / "a.png"
    Image.new("RGBA", (4, 4), (0, 0, 0, 0)).save(p)
    assert read_image(p).getpixel((0, 0)) == (255, 255, 255)


# ----------------------------------------------------------------------------- uncached loading, skip_bad
def _corrupt_split(tiny_root, tmp_path):
    root = _copy_tiny(tiny_root, tmp_path, [Row(0, "red_disc/test_000.png"), Row(0, "red_disc/bad.png"),
                                            Row(1, "green_square/test_000.png")])
    good = (root / "images/red_disc/test_000.png").read_bytes()
    (root / "images/red_disc/bad.png").write_bytes(good[: len(good) // 3])
    return ManifestDataset("tiny", "test", str(root))


@pytest.mark.parametrize("num_workers", [0, 1])
def test_decode_loader_skips_and_counts_unreadable_images(tiny_root, tmp_path, num_workers):
    ds = _corrupt_split(tiny_root, tmp_path)
    ld = DecodeLoader(ds, BatchTransform(16), batch_size=2, stored=16, shuffle=False, drop_last=False,
                      num_workers=num_workers, skip_bad=True)
    with pytest.warns(UserWarning, match=r"Skipping 1 unreadable image\(s\) in tiny/test: .*bad.png"):
        batches = list(ld)
    assert torch.cat([b["index"] for b in batches]).tolist() == [0, 2]
    assert [b["image"].shape[0] for b in batches] == [1, 1]
    assert torch.cat([b["target"] for b in batches]).tolist() == [0, 1]
    assert ld.bad == [1]


def test_decode_loader_names_unreadable_file_without_skip_bad(tiny_root, tmp_path):
    ds = _corrupt_split(tiny_root, tmp_path)
    ld = DecodeLoader(ds, BatchTransform(16), batch_size=2, stored=16, shuffle=False, drop_last=False,
                      num_workers=0)
    with pytest.raises(ImageReadError, match=r"bad\.png.*Set data\.skip_bad=true"):
        list(ld)


def test_make_loader_passes_skip_bad_and_aug_group_when_uncached(tiny_root, tmp_path):
    from fgir.config import load_config
    from fgir.engine.distributed import DistInfo
    from fgir.engine.train import make_loader

    ds = _corrupt_split(tiny_root, tmp_path)
    cfg = load_config(overrides=["data.cache=false", "data.skip_bad=true", "data.aug_group=3",
                                 "data.auto_augment=trivial", "data.img_size=16", "optim.batch_size=2"])
    ld = make_loader(cfg, ds, False, (0.5,) * 3, (0.5,) * 3, DistInfo())  # eval order: every row once
    assert isinstance(ld, DecodeLoader) and ld.skip_bad and ld.transform.aug_group == 3
    with pytest.warns(UserWarning, match="Skipping 1 unreadable"):
        seen = torch.cat([b["index"] for b in ld]).tolist()
    assert seen == [0, 2]


# ----------------------------------------------------------------------------- RandAugment / TrivialAugment draws
def _same_image(n: int, size: int = 24) -> torch.Tensor:
    img = torch.randint(0, 256, (1, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(5))
    return img.expand(n, -1, -1, -1).contiguous()


@pytest.mark.parametrize("aa", ["rand-m9-n2", "trivial"])
def test_auto_augment_draws_per_image_by_default(aa):
    x = _same_image(8)
    tf = BatchTransform(24, train=True, hflip=False, auto_augment=aa)
    assert tf.aug_group == 1
    out = tf(x, torch.Generator().manual_seed(0))
    assert len({o.numpy().tobytes() for o in out}) >= 5  # identical inputs, (mostly) different ops


@pytest.mark.parametrize("aa", ["rand-m9-n2", "trivial"])
def test_auto_augment_group_shares_one_draw(aa):
    x = _same_image(8)
    out = BatchTransform(24, train=True, hflip=False, auto_augment=aa, aug_group=4)(x, torch.Generator().manual_seed(0))
    for g in (out[:4], out[4:]):
        for o in g[1:]:
            torch.testing.assert_close(o, g[0], rtol=0, atol=0)


@pytest.mark.parametrize("aa", ["rand-m9-n2", "trivial"])
@pytest.mark.parametrize("group", [1, 4])
def test_auto_augment_seeded_by_generator_alone(aa, group):
    x = torch.randint(0, 256, (6, 3, 20, 20), dtype=torch.uint8)
    tf = BatchTransform(16, train=True, auto_augment=aa, aug_group=group)
    a = tf(x, torch.Generator().manual_seed(3))
    torch.rand(100)  # the global RNG plays no part
    b = tf(x, torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, tf(x, torch.Generator().manual_seed(4)))


@pytest.mark.parametrize("aa", ["rand-m9-n2", "trivial"])
def test_grouped_auto_augment_equals_torchvision_kernels_per_image(aa):
    from fgir.data.transforms import GroupedAutoAugment, parse_auto_augment

    tv = parse_auto_augment(aa)
    ga = GroupedAutoAugment(tv)
    x = torch.randint(0, 256, (32, 3, 20, 20), dtype=torch.uint8)
    x0 = x.clone()
    codes = ga.sample(32, 20, 20, gen=torch.Generator().manual_seed(1))
    out = ga.apply(x, codes)
    torch.testing.assert_close(x, x0, rtol=0, atol=0)  # input untouched
    space = list(tv._AUGMENTATION_SPACE.values())
    for i in range(32):
        img = x[i:i + 1]
        for code in codes[:, i].tolist():
            name, mag = ga.decode(code, 20, 20)
            fn, signed = space[ga.names.index(name)]
            table = fn(tv.num_magnitude_bins, 20, 20)
            if table is None:
                assert mag == 0.0
            else:
                allowed = [float(table[tv.magnitude])] if aa.startswith("rand") else [float(v) for v in table]
                assert abs(mag) in allowed and (signed or mag >= 0)
            img = tv._apply_image_or_video_transform(img, name, mag, interpolation=tv.interpolation, fill=tv._fill)
        torch.testing.assert_close(out[i:i + 1], img, rtol=0, atol=0)


def test_aug_group_below_one_is_an_error():
    with pytest.raises(ValueError, match="data.aug_group"):
        BatchTransform(8, train=True, auto_augment="trivial", aug_group=0)
