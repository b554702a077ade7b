"""The native input pipeline: a ``torch.utils.data.Dataset`` over the common split.

PyTorch idiom (torchvision ``references/classification/train.py``): a
map-style ``Dataset`` returns one sample, one ``DataLoader`` per split is
built once and kept across epochs, and the train loader reshuffles every
epoch through its sampler's ``set_epoch`` (``DistributedSampler``'s
convention); the augmentation is written with
``torchvision.transforms.v2.functional`` ops on tensors.
Decoding is ``common.data.load_image`` (the one decoder every backend uses);
what happens after it is exactly ``common.preprocess``: random crop from
``crop_source_size(size)`` + random horizontal flip for training, the image
at ``size`` for evaluation, then the model family's normalisation.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.transforms.v2 import functional as F

from common.data import Sample, drops_last_batch, load_image
from common.preprocess import Normalisation, crop_source_size


class SplitDataset(Dataset):
    """uint8 CHW image tensors and labels of one subset, in split order.

    With ``augment``, every sample draws its crop and flip from its own
    generator seeded by ``(seed, epoch, index)``: the same epoch gives the
    same augmentation whatever ``num_workers`` is.
    """

    def __init__(self, samples: list[Sample], size: int, augment: bool = False,
                 seed: int = 0, epoch: int = 0):
        self.samples = samples
        self.size = size
        self.augment = augment
        self.seed = seed
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        sample = self.samples[index]
        load_size = crop_source_size(self.size) if self.augment else self.size
        # HWC uint8 (numpy, like every framework) -> CHW: PyTorch convolutions are NCHW,
        # TensorFlow's NHWC.
        image = torch.from_numpy(load_image(sample.path, load_size).copy()).permute(2, 0, 1).contiguous()
        if self.augment:
            image = random_crop_flip(image, self.size, self._generator(index))
        return image, sample.label

    def set_epoch(self, epoch: int) -> None:
        """Draw the next samples' augmentation for ``epoch``. Workers copy the dataset when
        an epoch's iterator starts, so call this before iterating (no persistent workers)."""
        self.epoch = epoch

    def _generator(self, index: int) -> torch.Generator:
        return torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) * 1_000_033 + index)


class EpochShuffleSampler(Sampler[int]):
    """A permutation of ``range(n)`` that depends on ``(seed, epoch)`` only.

    ``set_epoch(e)`` before each epoch, as with ``DistributedSampler``: the order of
    epoch ``e`` is the same whether the epochs before it ran in this process or in an
    interrupted one, so a resumed run sees the batches an uninterrupted run would.
    """

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        generator = torch.Generator().manual_seed(shuffle_seed(self.seed) + self.epoch)
        return iter(torch.randperm(self.n, generator=generator).tolist())


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


def normalise(images: torch.Tensor, norm: Normalisation) -> torch.Tensor:
    """uint8 ``[N, 3, H, W]`` -> float32 ``(x * scale - mean) / std`` per channel,
    in channels_last memory like the model (see ``backend.build``)."""
    x = images.float() * norm.scale
    if norm.channel_order == "bgr":
        x = x.flip(1)  # channels are dim 1 in NCHW
    return F.normalize(x, list(norm.mean), list(norm.std)).contiguous(memory_format=torch.channels_last)


def train_loader(samples: list[Sample], size: int, batch_size: int, *, augment: bool, seed: int,
                 num_workers: int = 0, sampler: Sampler | None = None) -> DataLoader:
    """The training loader, built once: call ``set_epoch(loader, e)`` before each epoch.
    Order and augmentation of an epoch depend on ``(seed, epoch)`` only. ``sampler``: this
    rank's ``DistributedSampler`` under DDP (``batch_size`` is then the per-device batch)."""
    sampler = EpochShuffleSampler(len(samples), seed) if sampler is None else sampler
    return DataLoader(SplitDataset(samples, size, augment, seed), batch_size=batch_size,
                      sampler=sampler,
                      drop_last=drops_last_batch(len(sampler), batch_size),  # never a batch of 1
                      num_workers=num_workers, persistent_workers=False,
                      pin_memory=torch.cuda.is_available())


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Shuffle order and augmentation of ``epoch`` for a loader from ``train_loader``."""
    loader.sampler.set_epoch(epoch)
    loader.dataset.set_epoch(epoch)


def eval_loader(samples: list[Sample], size: int, batch_size: int, num_workers: int = 0,
                sampler: Sampler | None = None) -> DataLoader:
    """Batches in split order, no augmentation (``sampler``: this rank's share under DDP)."""
    return DataLoader(SplitDataset(samples, size), batch_size=batch_size, shuffle=False,
                      sampler=sampler, num_workers=num_workers,
                      pin_memory=torch.cuda.is_available())
