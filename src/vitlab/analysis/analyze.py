"""`vitlab analyze`: attention distance, entropy and patch similarity of a model over real images; CSV and plots.

Writes to the output folder:
- `attention.csv`: one row per attention call and head: index, layer, kind, head, mean attention
  distance in pixels (empty where queries or keys have no place in the image), entropy in nats;
- `similarity.csv`: one row per block: patch-wise absolute cosine similarity;
- `attention_distance.png` (each head's distance against depth, the ViT paper's figure 7),
  `entropy.png` and `similarity.png`.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import torch
from torch import Tensor, nn

from vitlab.analysis.maps import record_layers
from vitlab.analysis.stats import attention_entropy, mean_attention_distance, similarity_per_block


def analyze_batches(model: nn.Module, images: Tensor, batch_size: int = 16, embedding: bool = False) -> dict:
    """Per attention call and head: mean distance (px) and entropy; per block: patch similarity.

    Averaged over the images (the batches weighted by their size). `embedding`: the attention inside
    the embedding too (T2T-ViT's tokens-to-token layers, see `record_layers`).
    """
    names: list[tuple[str, str]] = []
    distance: list[Tensor | None] = []
    entropy: list[Tensor] = []
    similarity: list[float] = []
    total = 0
    for start in range(0, images.shape[0], batch_size):
        chunk = images[start : start + batch_size]
        n = chunk.shape[0]
        layers = record_layers(model, chunk, embedding=embedding)
        sims = similarity_per_block(model, chunk)
        if not names:
            names = [(layer.name, layer.kind) for layer in layers]
            distance = [None] * len(layers)
            entropy = [torch.zeros(layer.probs.shape[1], dtype=torch.float64) for layer in layers]
            similarity = [0.0] * len(sims)
        for i, layer in enumerate(layers):
            d = mean_attention_distance(layer)
            if d is not None:
                distance[i] = d * n if distance[i] is None else distance[i] + d * n
            entropy[i] += attention_entropy(layer) * n
        similarity = [s + v * n for s, v in zip(similarity, sims, strict=True)]
        total += n
    return {
        "layers": names,
        "distance": [None if d is None else d / total for d in distance],
        "entropy": [e / total for e in entropy],
        "similarity": [s / total for s in similarity],
        "images": total,
    }


def write_csv(result: dict, output: Path) -> None:
    output.mkdir(parents=True, exist_ok=True)
    with open(output / "attention.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["index", "layer", "kind", "head", "mean_distance_px", "entropy_nats"])
        for i, ((name, kind), d, e) in enumerate(
            zip(result["layers"], result["distance"], result["entropy"], strict=True)
        ):
            for head in range(len(e)):
                distance = "" if d is None else f"{float(d[head]):.4f}"
                writer.writerow([i, name, kind, head, distance, f"{float(e[head]):.4f}"])
    with open(output / "similarity.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["block", "patch_abs_cosine"])
        for block, value in enumerate(result["similarity"]):
            writer.writerow([block, "" if math.isnan(value) else f"{value:.4f}"])


def plot_results(result: dict, output: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for key, label, name in [("distance", "mean attention distance (pixels)", "attention_distance.png"),
                             ("entropy", "attention entropy (nats)", "entropy.png")]:  # fmt: skip
        fig, ax = plt.subplots(figsize=(4.5, 3.2))
        for index, values in enumerate(result[key]):
            if values is not None:
                ax.scatter([index] * len(values), values.numpy(), s=12, alpha=0.7)
        ax.set_xlabel("attention layer (depth)")
        ax.set_ylabel(label)
        ax.set_title(title, fontsize=9)
        fig.tight_layout()
        fig.savefig(output / name, dpi=100)
        plt.close(fig)
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    ax.plot(range(1, len(result["similarity"]) + 1), result["similarity"], marker="o")
    ax.set_xlabel("block")
    ax.set_ylabel("patch-wise |cosine similarity|")
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(output / "similarity.png", dpi=100)
    plt.close(fig)


def dataset_images(data: str, data_dir: str | None, count: int, split: str = "test") -> tuple[Tensor, Tensor]:
    """The first `count` images of a dataset split as a uint8 batch, and their labels."""
    from vitlab.data.datasets import build_datasets

    dataset = getattr(build_datasets(data, data_dir, folder_size=224), split)
    count = min(count, len(dataset))
    indices = torch.arange(count)
    if hasattr(dataset, "get_batch"):
        return dataset.get_batch(indices)
    pairs = [dataset[int(i)] for i in indices]
    return torch.stack([p[0] for p in pairs]), torch.tensor([int(p[1]) for p in pairs])
