"""`vitlab attention` on sequence models: the decoder's cross-attention, for each generated token.

- Image-to-sequence models (a ViT reads a strip): the strip file is read and decoded as `vitlab
  predict` reads it, and the picture is the one `vitlab predict --draw` writes
  (`seq2seq.predict.read_strip` / `draw_cross_attention`): per output token, its cross-attention
  over the strip, averaged over layers and heads or of `--layer` / `--head`.
- Token models (the Transformer, the recurrent baselines): given `--source` token ids (and the
  `--target` tokens, else the greedy decoding of the source), a target x source heat map per
  decoder layer and head: row i is what output token i read when the decoder was fed BOS and the
  tokens before it. A recurrent decoder has one attention (one head) that runs once per step.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import Tensor, nn

from vitlab.seq2seq.base import BOS, EOS, SPECIAL_TOKENS


def token_cross_attention(
    model: nn.Module, source: list[int], target: list[int] | None = None
) -> tuple[list[int], list[tuple[str, Tensor]]]:
    """The target tokens (given, or greedily decoded up to EOS) and each decoder layer's cross-attention
    for them, (name, (heads, targets, sources)), for one source sequence."""
    from vitlab.seq2seq.decoding import greedy_decode
    from vitlab.seq2seq.predict import cross_attention

    model.eval()
    src = torch.tensor([source], dtype=torch.long)
    if not target:
        target = greedy_decode(model, src)[0].tolist()
        target = target[: target.index(EOS) + 1] if EOS in target else target
    prefix = torch.tensor([[BOS, *target[:-1]]], dtype=torch.long)
    return target, [(name, probs[0]) for name, probs in cross_attention(model, src, prefix)]


def token_label(token: int) -> str:
    return SPECIAL_TOKENS[token] if token < len(SPECIAL_TOKENS) else str(token)


def draw_token_attention(
    source: list[int],
    target: list[int],
    layers: list[tuple[str, Tensor]],
    path: str | Path,
    layer: int | None = None,
    head: int | None = None,
) -> Path:
    """A grid of target x source heat maps: one row per decoder layer, one column per head (or the chosen ones)."""
    from vitlab.analysis.draw import _pyplot, save_figure

    if layer is not None and not -len(layers) <= layer < len(layers):
        raise ValueError(f"--layer {layer} is out of range: the decoder has {len(layers)} cross-attention layers")
    chosen = layers if layer is None else [layers[layer]]
    heads = chosen[0][1].shape[0]
    if head is not None and not 0 <= head < heads:
        raise ValueError(f"--head {head} is out of range: the cross-attention has {heads} heads")
    columns = list(range(heads)) if head is None else [head]
    plt = _pyplot()
    width, height = max(2.4, 0.25 * len(source) + 1.4), max(2.4, 0.25 * len(target) + 1.2)
    fig, axes = plt.subplots(len(chosen), len(columns), figsize=(width * len(columns), height * len(chosen) + 0.4),
                             squeeze=False)  # fmt: skip
    for row, (name, probs) in enumerate(chosen):
        for col, h in enumerate(columns):
            ax = axes[row, col]
            ax.imshow(probs[h].double().numpy(), cmap="inferno", vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.set_title(f"{name}, head {h}", fontsize=7)
            ax.set_xticks(range(len(source)), [token_label(t) for t in source], fontsize=6, rotation=90)
            ax.set_yticks(range(len(target)), [token_label(t) for t in target], fontsize=6)
            ax.set_xlabel("source tokens", fontsize=7)
            ax.set_ylabel("output tokens", fontsize=7)
    fig.suptitle("decoder cross-attention: each output token (row) over the source tokens (one colour scale, 0 to 1)",
                 fontsize=8)  # fmt: skip
    return save_figure(fig, path)


def draw_sequence_attention(model: nn.Module, args: argparse.Namespace) -> tuple[Path, str]:
    """`vitlab attention` for a sequence model: the picture's path and a line to print (ValueError: a bad command)."""
    from vitlab.seq2seq.image import ImageToSequence

    name = model.entry.name
    if isinstance(model, ImageToSequence):
        from vitlab.seq2seq.predict import draw_cross_attention, label_names, load_strip, read_strip

        if not args.image:
            raise ValueError(f"{name} reads a strip of images side by side: give the STRIP image file")
        x = load_strip(args.image, model.eval())
        tokens, attention = read_strip(model, x, args.layer, args.head)
        labels = label_names(model, tokens)
        where = "layers averaged" if args.layer is None else f"decoder layer {args.layer}"
        title = f"{where}, {'heads averaged' if args.head is None else f'head {args.head}'}"
        draw_cross_attention(x, attention, labels, args.output, title)
        return Path(args.output), f"{name} read: {' '.join(labels)}"
    if not args.source:
        raise ValueError(
            f"{name} reads token sequences, not images: give --source IDS (comma-separated token ids of its "
            f"vocabulary of {model.src_vocab_size}) and optionally --target IDS (default: its greedy decoding)"
        )
    target, layers = token_cross_attention(model, args.source, args.target)
    path = draw_token_attention(args.source, target, layers, args.output, args.layer, args.head)
    heads = layers[0][1].shape[0]
    return path, f"{name}: {len(layers)} cross-attention layer(s) of {heads} head(s), output {target}"
