"""`vitlab report RUN_DIR`: one self-contained HTML page about a training run (no network, images inlined).

It holds the run's configuration, its curves, the metrics table, the summary, per-class accuracy
and a confusion matrix on the first `images` test images (the model re-evaluated from
model.safetensors with the evaluation preprocessing), attention pictures on a few of those images
(the last attention layer's heads and, for token models, the rollout), and the model card.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import tempfile
from pathlib import Path

import torch
from torch import Tensor

from vitlab.train.rundir import RunDir

STYLE = """body{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}
th{background:#eee}pre{background:#f6f6f6;padding:8px;font-size:12px;overflow-x:auto}img{max-width:100%}"""


def _png(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.name)}" src="data:image/png;base64,{data}">'


def _figure_png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    return f'<img alt="figure" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def confusion(predicted: Tensor, labels: Tensor, classes: int) -> Tensor:
    """(classes, classes) counts, rows the true class, columns the predicted one."""
    matrix = torch.zeros(classes, classes, dtype=torch.long)
    matrix.index_put_((labels.long(), predicted.long()), torch.ones_like(labels, dtype=torch.long), accumulate=True)
    return matrix


def _evaluation(model, config: dict, count: int):
    """Predictions on the first `count` test images: (normalised images, labels, predictions)."""
    from vitlab.analysis.analyze import dataset_images
    from vitlab.analysis.commands import input_side
    from vitlab.data.augment import EvalPreprocess

    raw, labels = dataset_images(config["data"], config.get("data_dir"), count)
    pre = model.entry.preprocess
    size = input_side(model, raw.shape[-1])
    images = EvalPreprocess(size, pre.mean, pre.std, model.in_chans)(raw)
    with torch.no_grad():
        predicted = torch.cat([model(images[i : i + 256]).argmax(-1) for i in range(0, len(images), 256)])
    return images, labels, predicted


def _attention_section(model, images: Tensor, work: Path) -> str:
    from vitlab.analysis.attention import attention_rollout
    from vitlab.analysis.draw import draw_layer, draw_patch_map, image_for_display
    from vitlab.analysis.maps import NoAttentionError, record_layers

    pre = model.entry.preprocess
    parts = []
    for i in range(min(2, images.shape[0])):
        picture = image_for_display(images, pre.mean, pre.std, batch=i)
        try:
            layers = [layer for layer in record_layers(model, images[i : i + 1]) if layer.keys.spatial]
        except NoAttentionError as err:
            return f"<p>{html.escape(str(err))}</p>"
        parts.append(_png(draw_layer(layers[-1], work / f"attention{i}.png", picture)))
        try:
            rollout = attention_rollout(model, images[i : i + 1])
            parts.append(_png(draw_patch_map(rollout[0], work / f"rollout{i}.png", picture, "attention rollout")))
        except ValueError:
            pass  # pyramids: no rollout (see analysis.attention)
    return "".join(parts)


def _classification_sections(model, config: dict, images: int, names: list[str]) -> list[str]:
    """Per-class accuracy, the confusion matrix and attention pictures on the first test images."""
    import matplotlib.pyplot as plt

    sections = []
    x, labels, predicted = _evaluation(model, config, images)
    matrix = confusion(predicted, labels, model.num_classes)
    per_class = [
        [names[c], int(matrix[c].sum()), f"{100 * matrix[c, c] / max(int(matrix[c].sum()), 1):.1f}%"]
        for c in range(model.num_classes)
    ]
    accuracy = 100 * float((predicted == labels).float().mean())
    sections.append(f"<h2>Per-class accuracy ({len(labels)} test images, top-1 {accuracy:.2f}%)</h2>")
    sections.append(_table(["class", "images", "accuracy"], per_class))
    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.imshow(matrix.numpy(), cmap="Blues")
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.tight_layout()
    sections.append("<h2>Confusion matrix</h2>" + _figure_png(fig))
    plt.close(fig)
    with tempfile.TemporaryDirectory() as work:
        sections.append("<h2>Attention on test images</h2>" + _attention_section(model, x, Path(work)))
    return sections


def _segmentation_sections(path: Path, summary: dict) -> list[str]:
    """Per-class IoU and accuracy of the run's test measurement, and its picture of predictions."""
    iou, acc = summary.get("test_per_class_iou", {}), summary.get("test_per_class_acc", {})
    rows = [[name, f"{value:.2f}", f"{acc.get(name, float('nan')):.2f}"] for name, value in iou.items()]
    sections = [f"<h2>Per-class IoU (test mIoU {summary.get('test_miou', float('nan')):.2f})</h2>"]
    sections.append(_table(["class", "IoU (%)", "accuracy (%)"], rows))
    if (path / "predictions.png").is_file():
        sections.append("<h2>Validation images: image, truth, prediction</h2>" + _png(path / "predictions.png"))
    return sections


def write_report(run_dir: str | Path, output: str | Path | None = None, images: int = 500) -> Path:
    """Write the HTML report of a run; returns its path (RUN_DIR/report.html by default)."""
    import matplotlib

    matplotlib.use("Agg")

    from vitlab.analysis.cards import model_card
    from vitlab.registry import load_model

    run = RunDir(run_dir)
    if not run.weights.is_file():
        raise FileNotFoundError(f"{run.weights} not found: a report needs a finished run")
    config = run.read_config()
    model = load_model(run.weights).eval()
    names = getattr(model, "class_names", None) or [str(c) for c in range(model.num_classes)]
    sections = [f"<h1>Run {html.escape(str(run.path.name))}: {html.escape(model.entry.name)}</h1>"]
    sections.append(f"<h2>Configuration</h2><pre>{html.escape((run.path / RunDir.CONFIG).read_text())}</pre>")
    if (run.path / RunDir.CURVES).is_file():
        sections.append("<h2>Curves</h2>" + _png(run.path / RunDir.CURVES))
    if (run.path / RunDir.METRICS).is_file():
        rows = list(csv.reader((run.path / RunDir.METRICS).read_text().splitlines()))
        sections.append("<h2>Metrics by epoch</h2>" + _table(rows[0], rows[1:]))
    summary = {}
    if (run.path / RunDir.SUMMARY).is_file():
        summary = json.loads((run.path / RunDir.SUMMARY).read_text())
        sections.append("<h2>Summary</h2>" + _table(["measure", "value"], [[k, v] for k, v in summary.items()]))
    task = model.entry.task
    if task == "image-classification":
        sections += _classification_sections(model, config, images, names)
    elif task == "semantic-segmentation":
        sections += _segmentation_sections(run.path, summary)
    else:  # sequence-to-sequence: the summary holds its sequence and token accuracy
        sections.append(
            "<p>Sequence-to-sequence run: its sequence and token accuracies are in the summary above; "
            "<code>vitlab predict --checkpoint RUN/model.safetensors --draw attention.png STRIP.png</code> "
            "(or <code>vitlab attention --checkpoint RUN/model.safetensors STRIP.png</code>, which picks a "
            "<code>--layer</code> and <code>--head</code>) draws the decoder's cross-attention over a strip.</p>"
        )
    card = "the registered variant; the run's own arguments are in its configuration above"
    sections.append(f"<h2>Model card ({card})</h2><pre>{html.escape(model_card(model.entry.name))}</pre>")
    page = f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>vitlab report</title><style>{STYLE}</style>"
    page += "</head><body>" + "\n".join(sections) + "</body></html>"
    path = Path(output) if output else run.path / "report.html"
    path.write_text(page)
    return path
