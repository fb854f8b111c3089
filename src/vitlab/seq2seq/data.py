"""Data for sequence-to-sequence: strips of real images (image-to-sequence) and symbolic tasks.

Strips: 3 to 8 images of an IDX dataset (MNIST, Fashion-MNIST, the built-in demo subset), as
classification reads them, laid side by side; the target is their labels in order. A strip is
always `max_images` images wide: the images sit on the left and the rest is blank (zero), so a
batch is one tensor. Which images make each strip is drawn once from the seed; strips for
evaluation are made only from the test split's images. `StripDataset` keeps the images once and
composes each batch by indexing, so a training epoch of 20,000 strips costs no memory of its own.

Symbolic tasks (reversal and addition of digit strings of random lengths) test decoding and the
recurrent baselines without images.

Targets are `[BOS, y_1, ..., y_n, EOS, PAD, ...]`: the decoder reads all but the last position and
predicts all but the first.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vitlab.data.arrays import ArrayDataset, DatasetError
from vitlab.seq2seq.base import BOS, EOS, PAD

NUM_SPECIAL = 3  # PAD, BOS, EOS come first in every vocabulary


def target_tokens(labels: Tensor, lengths: Tensor) -> Tensor:
    """`[BOS, labels + 3, EOS, PAD...]` rows for labels (count, max) of which the first `lengths` count."""
    count, width = labels.shape
    out = torch.full((count, width + 2), PAD, dtype=torch.long)
    out[:, 0] = BOS
    keep = torch.arange(width)[None, :] < lengths[:, None]
    out[:, 1:-1] = torch.where(keep, labels + NUM_SPECIAL, PAD)
    out[torch.arange(count), lengths + 1] = EOS
    return out


class StripDataset(ArrayDataset):
    """`count` strips of `min_images`..`max_images` images of `images` (an ArrayDataset of one split).

    The batches the training loop asks for (`get_batch`) are (uint8 strips (B, C, H, W * max_images),
    target tokens (B, max_images + 2)). A subclass of ArrayDataset, so vitlab's deterministic loader
    serves it as it serves any in-memory dataset.
    """

    def __init__(self, images: ArrayDataset, count: int, min_images: int, max_images: int, seed: int, source: str):
        if not 1 <= min_images <= max_images:
            raise DatasetError(f"strips need 1 <= min_images <= max_images, got {min_images} and {max_images}")
        if len(images) == 0 or count < 1:
            raise DatasetError(f"{source}: cannot make {count} strips from {len(images)} images")
        generator = torch.Generator().manual_seed(seed)
        lengths = torch.randint(min_images, max_images + 1, (count,), generator=generator)
        picks = torch.randint(0, len(images), (count, max_images), generator=generator)
        self._init(images, picks, lengths, source)
        self.min_images = min_images

    def _init(self, images: ArrayDataset, picks: Tensor, lengths: Tensor, source: str) -> None:
        self.images_of, self.picks, self.lengths = images, picks, lengths
        self.max_images = picks.shape[1]
        self.labels = target_tokens(images.labels[picks], lengths)
        self.classes, self.source, self.channels = list(images.classes), source, images.channels
        self.size = (images.size[0], images.size[1] * self.max_images)

    def __len__(self) -> int:
        return len(self.picks)

    def get_batch(self, indices: Tensor) -> tuple[Tensor, Tensor]:
        picks, lengths = self.picks[indices], self.lengths[indices]
        tiles = self.images_of.images[picks]  # (B, max_images, C, h, w)
        present = torch.arange(self.max_images)[None, :] < lengths[:, None]
        tiles = tiles * present[:, :, None, None, None].to(tiles.dtype)
        B, n, C, h, w = tiles.shape
        strips = tiles.permute(0, 2, 3, 1, 4).reshape(B, C, h, n * w)
        return strips, self.labels[indices]

    def subset(self, indices: Tensor, source: str) -> StripDataset:
        out = StripDataset.__new__(StripDataset)
        out._init(self.images_of, self.picks[indices], self.lengths[indices], source)
        out.min_images = self.min_images
        return out


# Symbolic tasks: digits 0-9 are tokens 3..12, '+' is 13.
SYMBOLIC_VOCAB = 14
PLUS = 13
TASKS = ("reversal", "addition")


def _pad_rows(rows: list[list[int]], bos_eos: bool) -> tuple[Tensor, Tensor]:
    rows = [[BOS, *r, EOS] if bos_eos else r for r in rows]
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), PAD, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r)
    return out, out == PAD


def symbolic_batch(
    task: str, count: int, min_len: int, max_len: int, generator: torch.Generator
) -> tuple[Tensor, Tensor, Tensor]:
    """(source tokens, source padding, target tokens) of `count` examples with `min_len`..`max_len` digits.

    "reversal": the digits backwards. "addition": two numbers of min_len..max_len digits with '+'
    between them; the target is their sum's digits.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if not 1 <= min_len <= max_len:
        raise ValueError(f"need 1 <= min_len <= max_len, got {min_len} and {max_len}")
    lengths = torch.randint(min_len, max_len + 1, (count, 2), generator=generator).tolist()
    digits = torch.randint(0, 10, (count, 2, max_len), generator=generator).tolist()
    sources, targets = [], []
    for (n, m), (a, b) in zip(lengths, digits, strict=True):
        if task == "reversal":
            src = a[:n]
            tgt = src[::-1]
        else:
            a, b = a[:n], b[:m]
            src = [*a, None, *b]
            total = int("".join(map(str, a))) + int("".join(map(str, b)))
            tgt = [int(d) for d in str(total)]
        sources.append([PLUS if d is None else d + NUM_SPECIAL for d in src])
        targets.append([d + NUM_SPECIAL for d in tgt])
    src_tokens, src_padding = _pad_rows(sources, bos_eos=False)
    return src_tokens, src_padding, _pad_rows(targets, bos_eos=True)[0]
