"""Strips of real images and the symbolic tasks."""

import torch

from vitlab.data.datasets import demo_dataset
from vitlab.seq2seq.base import BOS, EOS, PAD
from vitlab.seq2seq.data import StripDataset, symbolic_batch


def test_a_strip_is_its_images_side_by_side_and_the_target_their_labels():
    images = demo_dataset("test")
    strips = StripDataset(images, 20, 3, 8, seed=0, source="test strips")
    batch, targets = strips.get_batch(torch.arange(20))
    assert batch.shape == (20, 1, 28, 224) and batch.dtype == torch.uint8
    for i in range(20):
        n = int(strips.lengths[i])
        assert 3 <= n <= 8
        for j in range(8):
            tile = batch[i, :, :, 28 * j : 28 * (j + 1)]
            if j < n:
                assert torch.equal(tile, images.images[strips.picks[i, j]])
            else:
                assert not tile.any()  # blank
        labels = [int(images.labels[strips.picks[i, j]]) + 3 for j in range(n)]
        assert targets[i].tolist() == [BOS, *labels, EOS] + [PAD] * (8 - n)


def test_strips_are_drawn_from_the_seed_and_their_split_only():
    train, test = demo_dataset("train"), demo_dataset("test")
    a = StripDataset(test, 50, 3, 8, seed=5, source="a")
    b = StripDataset(test, 50, 3, 8, seed=5, source="b")
    assert torch.equal(a.picks, b.picks) and torch.equal(a.labels, b.labels)
    assert int(a.picks.max()) < len(test) < len(train)  # indices of the test split's images
    sub = a.subset(torch.tensor([3, 7]), "sub")
    assert torch.equal(sub.get_batch(torch.arange(2))[0], a.get_batch(torch.tensor([3, 7]))[0])


def test_reversal_and_addition():
    generator = torch.Generator().manual_seed(0)
    src, padding, tgt = symbolic_batch("reversal", 30, 2, 6, generator)
    for s, p, t in zip(src, padding, tgt, strict=True):
        digits = s[~p].tolist()
        out = t.tolist()
        assert out[0] == BOS and out[1 : 1 + len(digits)] == digits[::-1] and out[1 + len(digits)] == EOS
    src, padding, tgt = symbolic_batch("addition", 30, 1, 4, generator)
    for s, p, t in zip(src, padding, tgt, strict=True):
        text = "".join("+" if v == 13 else str(v - 3) for v in s[~p].tolist())
        out = t.tolist()
        answer = "".join(str(v - 3) for v in out[1 : out.index(EOS)])
        left, right = text.split("+")
        assert int(answer) == int(left) + int(right)
