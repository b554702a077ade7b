"""The native input pipeline: a ``torch.utils.data.Dataset`` over the common split.

PyTorch idiom (torchvision ``references/classification/train.py``): a
map-style ``Dataset`` returns one sample, one ``DataLoader`` per split is
built once and kept across epochs, and the train loader reshuffles every
epoch through its sampler's ``set_epoch`` (``DistributedSampler``'s
convention); the augmentation is written with
``torchvision.transforms.v2.functional`` ops on tensors. With workers, the
loaders keep them between epochs (``persistent_workers``) and, on CUDA, hand
over pinned (page-locked) batches that the training loop copies with
``non_blocking=True``; the sampler sends each index with its epoch, so a
worker process started in epoch 1 still draws epoch 5's augmentation.
Decoding is ``common.data`` (the one decoder every backend uses) and an
evaluation image is finished there too (``Preset.eval_image``: the same array
in every backend); a training image is augmented here with
``torchvision.transforms.v2`` as the recipe's preset says
(``common.preprocess``): ``simple`` crops ``size`` from
``crop_source_size(size)`` and flips; ``inception`` and ``torchvision`` draw
the crop with ``RandomResizedCrop``'s own parameter sampler (the preset's area
and aspect bounds; torchvision has no distorted-bounding-box sampler, so
``inception`` uses this one too), resize it bilinearly with antialiasing and
flip; ``inception`` then distorts the colours in the preset's ordering
(slim's ``fast_mode=True``: brightness, then saturation).
With ``fidelity.crop_sampler = "aligned"`` the order (``CommonOrderSampler``) and
each sample's box, flip and colour amounts come from ``common.sampler`` and
``apply_params`` applies them as ``tf.image`` computes.
The model family's normalisation follows in the training loop.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from common.data import Sample, drops_last_batch
from common.preprocess import ColorDistortion, Normalisation, Preset, get_preset
from common.sampler import COLOR_OPS, CropParams, draw_params, sample_order


def chw(image) -> torch.Tensor:
    """HWC uint8 (numpy, like every framework) -> CHW: PyTorch convolutions are NCHW,
    TensorFlow's NHWC."""
    return torch.from_numpy(image.copy()).permute(2, 0, 1).contiguous()


class SplitDataset(Dataset):
    """CHW image tensors and labels of one subset, in split order: uint8, or float32 in
    [0, 255] after a colour distortion.

    With ``augment``, every sample draws its crop, flip and colours from its own
    generator seeded by ``(seed, epoch, index)``: the same epoch gives the
    same augmentation whatever ``num_workers`` is. ``common_sampler``
    (``fidelity.crop_sampler = "aligned"``): the draws are ``common.sampler``'s instead,
    applied by ``apply_params``.
    """

    def __init__(self, samples: list[Sample], size: int, augment: bool = False,
                 seed: int = 0, epoch: int = 0, preset: Preset | None = None,
                 common_sampler: bool = False):
        self.samples = samples
        self.common_sampler = common_sampler
        self.size = size
        self.augment = augment
        self.seed = seed
        self.epoch = epoch
        self.preset = preset or get_preset("simple")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        # EpochShuffleSampler sends (epoch, index): persistent workers hold a copy of this
        # dataset made when they started, so set_epoch in the main process cannot reach them
        epoch, index = key if isinstance(key, tuple) else (self.epoch, key)
        sample = self.samples[index]
        if not self.augment:
            return chw(self.preset.eval_image(sample.path, self.size)), sample.label
        image = chw(self.preset.train_source(sample.path, self.size))
        if self.common_sampler:
            params = draw_params(self.preset, image.shape[1], image.shape[2], self.size,
                                 self.seed, epoch, index)
            return apply_params(image, self.size, self.preset, params), sample.label
        return augment(image, self.size, self.preset, self._generator(epoch, index)), sample.label

    def set_epoch(self, epoch: int) -> None:
        """The epoch of samples asked for by a bare index (the sampler names its own)."""
        self.epoch = epoch

    def _generator(self, epoch: int, index: int) -> torch.Generator:
        return torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) * 1_000_033 + index)


class EpochShuffleSampler(Sampler[tuple[int, int]]):
    """A permutation of ``range(n)`` that depends on ``(seed, epoch)`` only, each index sent
    as ``(epoch, index)``.

    ``set_epoch(e)`` before each epoch, as with ``DistributedSampler``: the order of
    epoch ``e`` is the same whether the epochs before it ran in this process or in an
    interrupted one, so a resumed run sees the batches an uninterrupted run would.
    The epoch travels with the index to the (persistent) workers, which draw the
    augmentation of that epoch.
    """

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        generator = torch.Generator().manual_seed(shuffle_seed(self.seed) + self.epoch)
        return iter([(self.epoch, i) for i in torch.randperm(self.n, generator=generator).tolist()])


class CommonOrderSampler(EpochShuffleSampler):
    """``EpochShuffleSampler`` with the epoch's permutation drawn in ``common.sampler``
    (``fidelity.crop_sampler = "aligned"``: every backend's order)."""

    def __iter__(self):
        return iter([(self.epoch, int(i)) for i in sample_order(self.n, self.seed, self.epoch)])


class WithEpoch(Sampler[tuple[int, int]]):
    """Another sampler's indices sent as ``(epoch, index)`` (a ``DistributedSampler`` under
    DDP), so that persistent workers draw the augmentation of the epoch, as with
    ``EpochShuffleSampler``; ``set_epoch`` and ``len`` are the wrapped sampler's."""

    def __init__(self, sampler: Sampler):
        self.sampler = sampler

    @property
    def epoch(self) -> int:
        return getattr(self.sampler, "epoch", 0)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        epoch = self.epoch
        return iter([(epoch, i) for i in self.sampler])


def shuffle_seed(seed: int) -> int:
    """The seed the permutation of epoch ``e`` is drawn with, minus ``e``: the same number
    for ``EpochShuffleSampler`` and a ``DistributedSampler(seed=...)`` (which seeds
    ``seed + epoch``), so N ranks share out one process's permutation (``parallel.py``)."""
    return seed * 1_000_003


def random_crop_flip(image: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """A random ``size`` x ``size`` crop and a left-right flip with probability 1/2."""
    _, height, width = image.shape
    top = int(torch.randint(0, height - size + 1, (1,), generator=generator))
    left = int(torch.randint(0, width - size + 1, (1,), generator=generator))
    image = F.crop(image, top, left, size, size)
    if torch.rand((), generator=generator) < 0.5:
        image = F.horizontal_flip(image)
    return image


def augment(image: torch.Tensor, size: int, preset: Preset, generator: torch.Generator) -> torch.Tensor:
    """``preset``'s training augmentation of one CHW uint8 image (its ``train_source``)."""
    if preset.crop == "random_crop":
        return random_crop_flip(image, size, generator)
    # torchvision's RandomResizedCrop sampler (area uniform in the bounds, log-aspect uniform,
    # 10 attempts, else a centre crop) draws from torch's global generator: forked and seeded
    # per sample, so that an epoch's crops depend on (seed, epoch, index) only. TensorFlow's
    # sample_distorted_bounding_box draws the height instead (docs/differences.md).
    sampler = v2.RandomResizedCrop(size, scale=preset.effective_area, ratio=preset.aspect)
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        box = sampler.make_params([image])
    image = F.resized_crop(image, **box, size=[size, size],
                           interpolation=v2.InterpolationMode.BILINEAR, antialias=True)
    if torch.rand((), generator=generator) < preset.flip:
        image = F.horizontal_flip(image)
    if preset.color is not None:
        image = distort_color(image, preset.color, generator)
    return image


def distort_color(image: torch.Tensor, color: ColorDistortion,
                  generator: torch.Generator) -> torch.Tensor:
    """slim's ``distort_color`` with torchvision ops: one of ``color.orderings`` (uniform), each
    op's amount uniform in its range; uint8 in, float32 in [0, 255] out.

    torchvision's ops differ from ``tf.image``'s: saturation and contrast blend with the
    grayscale image (``tf.image`` scales HSV saturation, and contrast around each channel's
    own mean), ``adjust_brightness`` multiplies (``tf.image`` adds: done here with ``+``, as
    the spec says), and every op clamps to [0, 1] (``tf.image`` clips once, at the end).
    """
    x = image.float() / 255.0
    ordering = color.orderings[int(torch.randint(len(color.orderings), (1,), generator=generator))]
    for op in ordering:
        u = float(torch.rand((), generator=generator))
        if op == "brightness":
            amount = (2 * u - 1) * color.brightness
        elif op == "saturation":
            amount = color.saturation[0] + u * (color.saturation[1] - color.saturation[0])
        elif op == "hue":
            amount = (2 * u - 1) * color.hue
        elif op == "contrast":
            amount = color.contrast[0] + u * (color.contrast[1] - color.contrast[0])
        else:
            raise ValueError(f"unknown colour op {op!r}")
        x = color_op(x, op, amount)
    return x.clamp(0, 1) * 255.0


def color_op(x: torch.Tensor, op: str, amount: float) -> torch.Tensor:
    """One colour op of ``distort_color`` on an image in [0, 1], by ``amount`` (a delta for
    brightness and hue, a factor for saturation and contrast)."""
    if op == "brightness":
        return (x + amount).clamp(0, 1)
    if op == "saturation":
        return F.adjust_saturation(x, amount)
    if op == "hue":
        return F.adjust_hue(x, amount)
    return F.adjust_contrast(x, amount)


def tf_color_op(x: torch.Tensor, op: str, amount: float) -> torch.Tensor:
    """One ``tf.image.adjust_*`` op with torch ops on a CHW image in [0, 1]: brightness
    adds, contrast scales around each channel's mean, saturation and hue change the HSV
    image; nothing clipped between ops (``distort_color`` clips once, at the end)."""
    if op == "brightness":
        return x + amount
    if op == "contrast":
        mean = x.mean(dim=(-2, -1), keepdim=True)
        return (x - mean) * amount + mean
    h, s, v = rgb_to_hsv(x)
    if op == "saturation":
        s = (s * amount).clamp(0, 1)
    else:
        h = torch.remainder(h + amount, 1.0)
    return hsv_to_rgb(h, s, v)


def rgb_to_hsv(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``tf.image.rgb_to_hsv`` of a CHW image: hue, saturation, value."""
    r, g, b = x[0], x[1], x[2]
    v = x.max(0).values
    c = v - x.min(0).values
    s = torch.where(v > 0, c / torch.where(v > 0, v, torch.ones_like(v)), torch.zeros_like(v))
    safe = torch.where(c > 0, c, torch.ones_like(c))
    h = torch.where(v == r, (g - b) / safe, torch.where(v == g, 2 + (b - r) / safe, 4 + (r - g) / safe))
    h = torch.where(c > 0, torch.remainder(h / 6.0, 1.0), torch.zeros_like(h))
    return h, s, v


def hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``tf.image.hsv_to_rgb``: a CHW image."""
    k = torch.remainder(torch.stack([5.0 + h * 6, 3.0 + h * 6, 1.0 + h * 6]), 6.0)
    return v - v * s * torch.minimum(k, 4.0 - k).clamp(0, 1)


def apply_params(image: torch.Tensor, size: int, preset: Preset, params: CropParams) -> torch.Tensor:
    """``fidelity.crop_sampler = "aligned"``: the augmentation ``params`` drawn in
    ``common.sampler``, applied with torch ops to a CHW uint8 training source, computing
    what ``tf.image`` does. ``simple``: the uint8 crop, flipped; a resized crop: float32 in
    [0, 1], bilinear without antialiasing (``tf.image.resize``'s), flipped, the colour ops in
    the drawn ordering with the drawn amounts and ``tf.image``'s formulas (``tf_color_op``),
    clipped, in [0, 255]."""
    image = F.crop(image, params.top, params.left, params.height, params.width)
    if preset.crop == "random_crop":
        return F.horizontal_flip(image) if params.flip else image
    x = F.resize(image.float() / 255.0, [size, size],
                 interpolation=v2.InterpolationMode.BILINEAR, antialias=False)
    if params.flip:
        x = F.horizontal_flip(x)
    if preset.color is not None:
        for op in preset.color.orderings[params.ordering]:
            x = tf_color_op(x, op, params.amounts[COLOR_OPS.index(op)])
    return x.clamp(0, 1) * 255.0


def normalise(images: torch.Tensor, norm: Normalisation) -> torch.Tensor:
    """uint8 ``[N, 3, H, W]`` -> float32 ``(x * scale - mean) / std`` per channel,
    in channels_last memory like the model (see ``backend.build``)."""
    x = images.float() * norm.scale
    if norm.channel_order == "bgr":
        x = x.flip(1)  # channels are dim 1 in NCHW
    return F.normalize(x, list(norm.mean), list(norm.std)).contiguous(memory_format=torch.channels_last)


def _loader_options(num_workers: int) -> dict:
    """Workers kept between epochs and pinned batches on CUDA (torchvision references)."""
    return {"num_workers": num_workers, "persistent_workers": num_workers > 0,
            "pin_memory": torch.cuda.is_available()}


def train_loader(samples: list[Sample], size: int, batch_size: int, *, augment: bool, seed: int,
                 num_workers: int = 0, sampler: Sampler | None = None,
                 preset: Preset | None = None, common_sampler: bool = False) -> DataLoader:
    """The training loader, built once: call ``set_epoch(loader, e)`` before each epoch.
    Order and augmentation of an epoch depend on ``(seed, epoch)`` only. ``sampler``: this
    rank's ``DistributedSampler`` under DDP (``batch_size`` is then the per-device batch;
    its order is the sampler's also with ``common_sampler``, the crops ``common.sampler``'s).
    ``common_sampler``: order and augmentation drawn in ``common.sampler``."""
    if sampler is not None:
        sampler = WithEpoch(sampler)
    else:
        sampler = (CommonOrderSampler if common_sampler else EpochShuffleSampler)(len(samples), seed)
    return DataLoader(SplitDataset(samples, size, augment, seed, preset=preset,
                                   common_sampler=common_sampler),
                      batch_size=batch_size, sampler=sampler,
                      drop_last=drops_last_batch(len(sampler), batch_size),  # never a batch of 1
                      **_loader_options(num_workers))


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Shuffle order and augmentation of ``epoch`` for a loader from ``train_loader``."""
    loader.sampler.set_epoch(epoch)
    loader.dataset.set_epoch(epoch)


def eval_loader(samples: list[Sample], size: int, batch_size: int, num_workers: int = 0,
                sampler: Sampler | None = None, preset: Preset | None = None) -> DataLoader:
    """Batches in split order: the preset's evaluation images (``Preset.eval_image``);
    ``sampler``: this rank's share under DDP."""
    return DataLoader(SplitDataset(samples, size, preset=preset), batch_size=batch_size,
                      shuffle=False, sampler=sampler, **_loader_options(num_workers))


def describe_loader(loader: DataLoader) -> str:
    """What feeds the training loop, for throughput reports."""
    workers = loader.num_workers
    how = (f"{workers} persistent worker process(es)" if workers and loader.persistent_workers
           else f"{workers} worker process(es)" if workers else "decoded in the training process")
    preset = loader.dataset.preset.name
    return (f"torch DataLoader: PIL decode + torchvision.transforms.v2 ({preset} preset), {how}, "
            f"batch {loader.batch_size}, pin_memory={loader.pin_memory}, "
            f"non_blocking copies to the device, normalised on the device")
