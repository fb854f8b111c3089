"""`vitlab predict` for image-to-sequence models: the labels of a strip, and where each was read.

The strip is read as the model's channels, scaled to the model's height (keeping its aspect) and
padded on the right with blank up to the width the model is built for, as in training. Labels are
decoded greedily. With a picture path, the decoder's cross-attention (recorded by
`capture_attention` while the decoded labels are fed back, averaged over heads and layers or of one
layer and head, the class token left out) is drawn over the strip, one row per output token: which
image each label looked at. `cross_attention` serves every sequence model (`vitlab attention`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from vitlab.layers.attention import capture_attention
from vitlab.seq2seq.base import BOS, EOS, Seq2SeqModel
from vitlab.seq2seq.decoding import greedy_decode
from vitlab.seq2seq.image import NUM_SPECIAL, ImageToSequence
from vitlab.seq2seq.rnn import RecurrentAttention


def load_strip(path: str | Path, model: ImageToSequence) -> Tensor:
    """A strip file as a normalised (1, in_chans, height, width) batch at the model's height and width."""
    from PIL import Image

    from vitlab.data.images import load_image

    image = load_image(path)
    image = image.convert("L") if model.in_chans == 1 else image
    height, width = model.strip_size
    scaled = max(1, round(image.width * height / image.height))
    if scaled > width:
        raise ValueError(
            f"{path}: a strip {image.width}x{image.height} is {scaled} pixels wide at the model's height {height}; "
            f"the model reads strips up to {width} pixels ({model.max_images} images)"
        )
    image = image.resize((scaled, height), Image.BILINEAR)
    array = torch.from_numpy(np.asarray(image, dtype=np.float32).copy()) / 255.0
    x = array[None, None] if array.ndim == 2 else array.permute(2, 0, 1)[None]
    x = F.pad(x, (0, width - scaled))
    pre = model.entry.preprocess
    mean, std = torch.tensor(pre.mean), torch.tensor(pre.std)
    if len(mean) != model.in_chans:
        mean, std = mean.mean().expand(model.in_chans), std.mean().expand(model.in_chans)
    return (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)


@torch.no_grad()
def cross_attention(model: Seq2SeqModel, src: Tensor, prefix: Tensor) -> list[tuple[str, Tensor]]:
    """The decoder's cross-attention when it is fed `prefix` (BOS, y1, ..., y_{n-1}): per decoder
    layer, its name and (batch, heads, targets, sources) probabilities. A Transformer decoder layer
    attends once for all targets; a recurrent decoder attends once per step (one head), the steps stacked."""
    with capture_attention(model) as maps:
        model(src, prefix)
    names = [n for n, m in model.named_modules() if n.endswith("cross_attn") or isinstance(m, RecurrentAttention)]
    return [(name, torch.cat(maps[name], dim=-2)) for name in names]


def select_attention(cross: list[tuple[str, Tensor]], layer: int | None, head: int | None) -> Tensor:
    """One layer (index) and head of `cross`, each else averaged: (batch, targets, sources)."""
    probs = torch.stack([p for _, p in cross])  # (layers, batch, heads, targets, sources)
    if layer is not None and not -len(cross) <= layer < len(cross):
        raise ValueError(f"--layer {layer} is out of range: the decoder has {len(cross)} cross-attention layers")
    if head is not None and not 0 <= head < probs.shape[2]:
        raise ValueError(f"--head {head} is out of range: the cross-attention has {probs.shape[2]} heads")
    probs = probs if layer is None else probs[[layer]]
    probs = probs if head is None else probs[:, :, [head]]
    return probs.mean(dim=(0, 2))


@torch.no_grad()
def read_strip(
    model: ImageToSequence, x: Tensor, layer: int | None = None, head: int | None = None
) -> tuple[list[int], Tensor]:
    """The decoded tokens (EOS included when emitted) and the cross-attention over the strip's patches
    per output token, (tokens, grid height, grid width): averaged over the decoder's layers and heads,
    or of one `layer` (index) and `head`."""
    tokens = greedy_decode(model, x)[0].tolist()
    if EOS in tokens:
        tokens = tokens[: tokens.index(EOS) + 1]
    prefix = torch.tensor([[BOS, *tokens[:-1]]], device=x.device)
    attention = select_attention(cross_attention(model, x, prefix), layer, head)[0]  # (tokens, 1 + patches)
    patch = model.encoder.patch_size
    grid = (-(-x.shape[-2] // patch[0]), -(-x.shape[-1] // patch[1]))
    return tokens, attention[:, 1:].reshape(len(tokens), *grid)  # the class token left out


def label_names(model: ImageToSequence, tokens: list[int]) -> list[str]:
    names = getattr(model, "class_names", None)
    out = []
    for t in tokens:
        if t == EOS:
            out.append("<end>")
        else:
            c = t - NUM_SPECIAL
            out.append(names[c] if names and 0 <= c < len(names) else f"class {c}")
    return out


def draw_cross_attention(
    x: Tensor, attention: Tensor, labels: list[str], path: str | Path, title: str = "heads and layers averaged"
) -> None:
    """The strip, then per output token its cross-attention upsampled over the strip."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vitlab.train.checkpoint import atomic_write_bytes
    from vitlab.train.plots import _figure_bytes

    picture = x[0].mean(0).cpu().numpy()
    heat = F.interpolate(attention[:, None].float(), size=picture.shape, mode="nearest")[:, 0].cpu().numpy()
    rows = len(labels) + 1
    fig, axes = plt.subplots(rows, 1, figsize=(8, 1.15 * rows + 0.3), squeeze=False)
    axes[0, 0].imshow(picture, cmap="gray")
    axes[0, 0].set_title("input strip", fontsize=8)
    for i, label in enumerate(labels, 1):
        axes[i, 0].imshow(picture, cmap="gray")
        axes[i, 0].imshow(heat[i - 1], cmap="inferno", alpha=0.6)
        axes[i, 0].set_title(f"output {i}: {label}", fontsize=8)
    for ax in axes[:, 0]:
        ax.axis("off")
    fig.suptitle(f"decoder cross-attention ({title})", fontsize=9)
    atomic_write_bytes(Path(path), _figure_bytes(fig))
    plt.close(fig)


def predict_strips(
    model: ImageToSequence, paths: list[str | Path], draw: str | None, skipped: list[str] | None = None
) -> list[list[str]]:
    """Print the labels of each strip; with `draw`, write the cross-attention picture(s) there
    (`draw` itself for one strip, `<stem>-<i><suffix>` for several). A strip file that cannot be read
    raises BadImageError naming it, or with a `skipped` list is left out and appended."""
    from vitlab.data.images import SKIP_HINT, BadImageError

    results = []
    for i, path in enumerate(paths):
        try:
            x = load_strip(path, model)
        except BadImageError as err:
            if skipped is None:
                raise BadImageError(err.path, err.reason + SKIP_HINT) from err
            skipped.append(str(path))
            continue
        tokens, attention = read_strip(model, x)
        labels = label_names(model, tokens)
        print(f"{path}: {' '.join(l for l in labels if l != '<end>')}")
        if draw:
            target = (
                Path(draw) if len(paths) == 1 else Path(draw).with_name(f"{Path(draw).stem}-{i}{Path(draw).suffix}")
            )
            draw_cross_attention(x, attention, labels, target)
            print(f"  cross-attention drawn to {target}")
        results.append(labels)
    return results
