"""Batched augmentation on uint8 tensors (the decoded cache) and the matching eval transform.

Images are stored square-resized to ``int(resize_ratio * S)`` (the reference engine's "square
resize to int(1.34 S)"); training takes a random S crop (or a RandomResizedCrop), flips,
optionally colour-jitters (per-image factors), applies TrivialAugment / RandAugment
(torchvision v2's ops, one draw per image by default;
``aug_group`` > 1 shares a draw between neighbours for speed), normalises, and optionally
random-erases (timm).
Evaluation takes the centre S crop. Everything runs on whole batches.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.ops import roi_align
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def stored_size(img_size: int, resize_ratio: float) -> int:
    """Side of the square the images are resized to before cropping (reference: int(1.34 S))."""
    return max(img_size, int(resize_ratio * img_size))


def eval_resize_ratio(data: dict | object) -> float:
    """The resize ratio evaluation and prediction use: ``data.eval_resize_ratio``, or
    ``data.resize_ratio`` when that is 0 or absent (configs written before it existed)."""
    get = data.get if isinstance(data, dict) else lambda k, d=None: getattr(data, k, d)
    return float(get("eval_resize_ratio", 0.0) or get("resize_ratio"))


def load_resized(img: Image.Image, size: int) -> np.ndarray:
    """PIL image -> square-resized (bicubic, antialiased) uint8 HxWx3 array."""
    img = img.convert("RGB")
    if img.size != (size, size):
        img = img.resize((size, size), Image.BICUBIC)
    return np.array(img, dtype=np.uint8)


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top:top + size, left:left + size]


def normalize(x_uint8: torch.Tensor, mean, std) -> torch.Tensor:
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
    return (x_uint8.float() - m) / s


def parse_auto_augment(name: str):
    """'' -> None; 'trivial' -> TrivialAugmentWide; 'rand-m9-n2' (timm style) -> RandAugment."""
    if not name:
        return None
    if name in ("trivial", "ta", "trivialaugment"):
        return v2.TrivialAugmentWide()
    if name == "rand" or name.startswith("rand-"):
        m = re.search(r"-m(\d+)", name)
        n = re.search(r"-n(\d+)", name)
        return v2.RandAugment(num_ops=int(n.group(1)) if n else 2, magnitude=int(m.group(1)) if m else 9)
    if name in ("augmix",):
        return v2.AugMix()
    raise ValueError(f"data.auto_augment='{name}' is not supported; expected '', 'trivial', "
                     "'rand-m9-n2' (RandAugment magnitude 9, 2 ops) or 'augmix'.")


class GroupedAutoAugment:
    """RandAugment / TrivialAugmentWide on a uint8 batch with one draw per group of images.

    The op table, magnitudes and kernels are torchvision v2's own (its ``_AUGMENTATION_SPACE`` and
    ``_apply_image_or_video_transform``, private but unchanged since v2 appeared; the tests compare
    against them); only the sampling differs: every draw comes from ``gen``, is coded as one
    integer (op, magnitude bin, sign), and all images holding the same draw go through the kernel
    in one call. One draw per image therefore costs one kernel call per *distinct* draw, not one
    transform call per image.
    """

    def __init__(self, aa: v2.RandAugment | v2.TrivialAugmentWide):
        self.aa = aa
        self.names = list(aa._AUGMENTATION_SPACE)
        self.num_bins = aa.num_magnitude_bins
        rand = isinstance(aa, v2.RandAugment)
        self.layers = aa.num_ops if rand else 1
        self.fixed_bin = aa.magnitude if rand else None
        self._tables: dict[tuple[int, int], list] = {}

    def magnitudes(self, h: int, w: int) -> list:
        """Per op: its magnitude of each bin (list of floats), or None for ops without one."""
        if (h, w) not in self._tables:
            self._tables[(h, w)] = [None if (m := fn(self.num_bins, h, w)) is None else [float(v) for v in m]
                                    for fn, _ in self.aa._AUGMENTATION_SPACE.values()]
        return self._tables[(h, w)]

    def sample(self, b: int, h: int, w: int, group: int = 1, gen: torch.Generator | None = None) -> torch.Tensor:
        """(layers, b) draw codes; consecutive runs of ``group`` images share one."""
        n = -(-b // group)
        table = self.magnitudes(h, w)
        has_mag = torch.tensor([m is not None for m in table])
        signed = torch.tensor([s for _, s in self.aa._AUGMENTATION_SPACE.values()]) & has_mag
        op = torch.randint(len(self.names), (self.layers, n), generator=gen)
        if self.fixed_bin is None:
            bins = torch.randint(self.num_bins, (self.layers, n), generator=gen)
        else:
            bins = torch.full((self.layers, n), self.fixed_bin)
        neg = torch.rand(self.layers, n, generator=gen) < 0.5
        codes = (op * self.num_bins + torch.where(has_mag[op], bins, 0)) * 2 + (neg & signed[op]).long()
        return codes.repeat_interleave(group, dim=1)[:, :b] if group > 1 else codes

    def decode(self, code: int, h: int, w: int) -> tuple[str, float]:
        """A draw code -> (torchvision op name, signed magnitude)."""
        op, rest = divmod(code, 2 * self.num_bins)
        mags = self.magnitudes(h, w)[op]
        mag = 0.0 if mags is None else mags[rest // 2] * (-1.0 if rest % 2 else 1.0)
        return self.names[op], mag

    def apply(self, x: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Apply the drawn ops layer by layer, one kernel call per distinct draw; ``x`` is not modified."""
        b, h, w = x.shape[0], x.shape[-2], x.shape[-1]
        owned = False
        for layer in codes:
            order = torch.argsort(layer, stable=True)
            uniq, counts = torch.unique_consecutive(layer[order], return_counts=True)
            for code, idx in zip(uniq.tolist(), order.split(counts.tolist())):
                name, mag = self.decode(code, h, w)
                if name == "Identity":
                    continue
                if len(idx) == b:
                    x, owned = self._op(x, name, mag), True
                    continue
                if not owned:
                    x, owned = x.clone(), True
                x[idx] = self._op(x[idx], name, mag)
        return x

    def _op(self, x: torch.Tensor, name: str, mag: float) -> torch.Tensor:
        return self.aa._apply_image_or_video_transform(x, name, mag, interpolation=self.aa.interpolation,
                                                        fill=self.aa._fill)


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """``B x 3 x H x W`` RGB in [0, 1] -> HSV in [0, 1] (hue as a fraction of a turn)."""
    r, g, b = x.unbind(1)
    maxc, minc = x.amax(dim=1), x.amin(dim=1)
    delta = maxc - minc
    s = delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc))
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    h = torch.where(maxc == r, (g - b) / safe, torch.where(maxc == g, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe))
    h = torch.where(delta > 0, torch.remainder(h / 6.0, 1.0), torch.zeros_like(h))
    return torch.stack([h, s, maxc], dim=1)


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_hsv`."""
    h, s, v = x.unbind(1)
    out = []
    for n in (5.0, 3.0, 1.0):  # R, G, B
        k = torch.remainder(n + h * 6.0, 6.0)
        out.append(v - v * s * torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0))
    return torch.stack(out, dim=1)


def _gray(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601-2 luma (torchvision's grayscale weights), ``B x 1 x H x W``."""
    return (0.2989 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)


def jitter_op(x: torch.Tensor, op: int, factor: torch.Tensor) -> torch.Tensor:
    """One ColorJitter op on float images in [0, 1] with one factor per image: 0 brightness,
    1 contrast, 2 saturation (blend factors), 3 hue (shift in turns); torchvision's definitions."""
    f = factor.view(-1, 1, 1, 1).to(x.dtype)
    if op == 3:
        hsv = rgb_to_hsv(x)
        hsv = torch.cat([torch.remainder(hsv[:, :1] + f, 1.0), hsv[:, 1:]], dim=1)
        return hsv_to_rgb(hsv)
    if op == 0:
        other = torch.zeros_like(x)
    elif op == 1:
        other = _gray(x).mean(dim=(-3, -2, -1), keepdim=True)
    else:
        other = _gray(x)
    return (f * x + (1.0 - f) * other).clamp(0.0, 1.0)


def color_jitter(x: torch.Tensor, strengths, gen: torch.Generator | None = None) -> torch.Tensor:
    """torchvision ``ColorJitter(*strengths)`` on a uint8 batch, with its factors (brightness,
    contrast and saturation uniform in [max(0, 1 - s), 1 + s], hue in [-s, s]) and op order drawn
    per image from ``gen``; ops with strength 0 are skipped. Returns uint8."""
    b = x.shape[0]
    ranges = [(max(0.0, 1.0 - v), 1.0 + v) for v in strengths[:3]] + [(-strengths[3], strengths[3])]
    factors = [torch.empty(b).uniform_(lo, hi, generator=gen) for lo, hi in ranges]
    order = torch.argsort(torch.rand(b, 4, generator=gen), dim=1)  # per-image permutation of the 4 ops
    active = [j for j in range(4) if strengths[j] > 0]
    y = x.float() / 255.0
    for stage in range(4):
        for j in active:
            idx = (order[:, stage] == j).nonzero().flatten()
            if len(idx):
                y[idx] = jitter_op(y[idx], j, factors[j][idx])
    return (y * 255.0).round_().clamp_(0, 255).to(torch.uint8)


@dataclass
class BatchTransform:
    """Turns a uint8 batch (B,3,H,W) at the stored size into a normalised float batch (B,3,S,S).

    ``aug_group`` images share one RandAugment / TrivialAugment / AugMix draw (1 = per image).
    All randomness but AugMix's and random erasing's comes from the ``gen`` passed per call.
    """

    img_size: int
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    train: bool = False
    crop: str = "random"
    hflip: bool = True
    auto_augment: str = ""
    aug_group: int = 1
    random_erasing: float = 0.0
    color_jitter: tuple = ()

    def __post_init__(self):
        if self.color_jitter and len(self.color_jitter) != 4:
            raise ValueError(f"color_jitter must be () or four strengths, got {self.color_jitter!r}.")
        if self.aug_group < 1:
            raise ValueError(f"data.aug_group must be >= 1, got {self.aug_group}.")
        self._aa = parse_auto_augment(self.auto_augment) if self.train else None
        self._grouped = (GroupedAutoAugment(self._aa)
                         if isinstance(self._aa, (v2.RandAugment, v2.TrivialAugmentWide)) else None)
        self._re = None
        if self.train and self.random_erasing > 0:
            from timm.data.random_erasing import RandomErasing

            self._re = RandomErasing(self.random_erasing, mode="const", device="cpu")

    def __call__(self, x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        if not self.train:
            return normalize(center_crop(x, self.img_size), self.mean, self.std)
        b, _, h, w = x.shape
        s = self.img_size
        if self.crop == "rrc":
            x = self._random_resized_crop(x, gen)
        elif h > s or w > s:
            tops = torch.randint(0, h - s + 1, (b,), generator=gen)
            lefts = torch.randint(0, w - s + 1, (b,), generator=gen)
            rows = tops[:, None] + torch.arange(s)[None]  # B x S
            cols = lefts[:, None] + torch.arange(s)[None]
            idx = torch.arange(b)[:, None, None]
            x = x.permute(0, 2, 3, 1)[idx, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()
        if self.hflip:
            flip = torch.rand(b, generator=gen) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        if self.color_jitter and any(v > 0 for v in self.color_jitter):
            x = color_jitter(x, self.color_jitter, gen)
        if self._grouped is not None:
            x = self._grouped.apply(x, self._grouped.sample(b, *x.shape[-2:], group=self.aug_group, gen=gen))
        elif self._aa is not None:
            g = self.aug_group
            x = torch.cat([self._aa(x[i:i + g]) for i in range(0, b, g)])
        out = normalize(x, self.mean, self.std)
        if self._re is not None:
            out = self._re(out)
        return out

    def _random_resized_crop(self, x: torch.Tensor, gen, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
        b, _, h, w = x.shape
        area = h * w * torch.empty(b).uniform_(*scale, generator=gen)
        logr = torch.empty(b).uniform_(np.log(ratio[0]), np.log(ratio[1]), generator=gen)
        ar = torch.exp(logr)
        cw = torch.sqrt(area * ar).clamp(1, w)
        ch = torch.sqrt(area / ar).clamp(1, h)
        x0 = torch.rand(b, generator=gen) * (w - cw)
        y0 = torch.rand(b, generator=gen) * (h - ch)
        boxes = torch.stack([torch.arange(b, dtype=torch.float32), x0, y0, x0 + cw, y0 + ch], 1)
        out = roi_align(x.float(), boxes, output_size=self.img_size, spatial_scale=1.0, sampling_ratio=2,
                        aligned=True)
        return out.round().clamp(0, 255).to(torch.uint8)


def to_model_size(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bicubic resize of a normalised float batch to the deployable model's input size (a no-op
    when it already has it): how a distilled low-resolution student sees teacher-size inputs."""
    if tuple(images.shape[-2:]) == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bicubic", align_corners=False)
