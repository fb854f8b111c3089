"""Published weights: what each variant's released checkpoints are, where they live, in which layout.

A variant's registry entry lists its `Weights`, the default first. A name takes a pretrained tag as
timm's do (`deit_tiny_patch16_224.fb_in1k`); the plain name means the default tag. Where timm hosts
a model, the files are timm's on the Hugging Face hub (`timm/<name>.<tag>`, `model.safetensors`, in
timm's layout, which is vitlab's own for those families); the tags, class counts and evaluation
transforms are those of timm's `pretrained_cfg`s, recorded in `resources/timm_weights.json` by
`tools/timm_weights.py`. Other families name their official release's URL and layout.

Sizes and SHA-256 are recorded only where the release states them. timm's configurations state
neither; a file fetched from the hub is checked against the SHA-256 the hub itself reports for it
(its LFS ETag), see `vitlab.hub`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any

from vitlab.registry import Preprocess

if TYPE_CHECKING:
    from vitlab.registry import ModelEntry

HF_ENDPOINT = "https://huggingface.co"
IMAGENET_1K = "imagenet-1k"


@dataclass(frozen=True)
class Weights:
    """One published checkpoint of a variant.

    Exactly one of `hf_hub_id` (a Hugging Face hub repository, with `filename` in it) and `url` (a
    plain download; `filename` names the cached file when the URL's path has no weights suffix, as
    share links do) says where the file is. `layout` names the layout it is in ("timm", "official",
    "hf"); loading converts it through the family's converters. `sha256` and `size` (bytes) are the
    release's own statements, None where it makes none. `num_classes` is the classifier the file
    holds (0: none, a feature extractor); `classes` names the label set whose names ship with vitlab
    ("imagenet-1k"), None where they do not. `preprocess` is the evaluation transform the weights
    expect (None: the variant's). `config_file` (HF layout) is fetched beside the weights and builds
    the model as HF's `from_pretrained` would (sizes, LayerNorm eps, labels). `ema`: the file is a
    training checkpoint, evaluated with its EMA weights. `top1` is the ImageNet-1k top-1 the release
    reports, where recorded.
    """

    tag: str
    hf_hub_id: str | None = None
    filename: str = "model.safetensors"
    url: str | None = None
    layout: str = "timm"
    sha256: str | None = None
    size: int | None = None
    num_classes: int = 1000
    classes: str | None = IMAGENET_1K
    preprocess: Preprocess | None = None
    ema: bool = False
    top1: float | None = None
    license: str | None = None
    origin: str | None = None  # the release the hub file was converted from
    config_file: str | None = None  # HF layout: the config.json fetched beside the weights (sizes, eps, labels)

    def __post_init__(self) -> None:
        if (self.hf_hub_id is None) == (self.url is None):
            raise ValueError(f"weights {self.tag!r}: give exactly one of hf_hub_id and url")
        if self.sha256 is not None and (len(self.sha256) != 64 or not _is_hex(self.sha256)):
            raise ValueError(f"weights {self.tag!r}: sha256 must be 64 hexadecimal digits, got {self.sha256!r}")

    @property
    def source(self) -> str:
        """Where the file is, as a URL (the hub's public address for hub files)."""
        if self.hf_hub_id is not None:
            return f"{HF_ENDPOINT}/{self.hf_hub_id}/resolve/main/{self.filename}"
        return str(self.url)

    def class_names(self) -> list[str] | None:
        """The names of the classifier's classes, in order, where vitlab ships them."""
        if self.classes == IMAGENET_1K and self.num_classes == 1000:
            return imagenet_class_names()
        return None


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text.lower())


@cache
def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class names in the order of the usual class indices (synset order).

    Each line is the WordNet lemmas of the class's synset, as in timm's `imagenet_synset_to_lemma.txt`.
    """
    text = (resources.files("vitlab") / "resources" / "imagenet1k_classes.txt").read_text(encoding="utf-8")
    names = [line for line in text.splitlines() if line]
    if len(names) != 1000:
        raise RuntimeError(f"vitlab's resources/imagenet1k_classes.txt holds {len(names)} names, not 1000")
    return names


@cache
def _timm_table() -> dict[str, list[dict[str, Any]]]:
    text = (resources.files("vitlab") / "resources" / "timm_weights.json").read_text(encoding="utf-8")
    return json.loads(text)


def timm_weights(name: str, default: str | None = None) -> tuple[Weights, ...]:
    """The weights timm publishes on the hub for variant `name`, `default` first, then timm's order.

    Without `default`, timm's own default tag comes first.
    """
    rows = _timm_table().get(name, [])
    tags = [row["tag"] for row in rows]
    if default is not None:
        if default not in tags:
            raise ValueError(f"timm publishes no {name}.{default}; its tags: {', '.join(tags) or 'none'}")
        rows = sorted(rows, key=lambda row: row["tag"] != default)
    return tuple(_from_timm(row) for row in rows)


def _from_timm(row: dict[str, Any]) -> Weights:
    num_classes = row["num_classes"]
    return Weights(
        tag=row["tag"],
        hf_hub_id=row["hf_hub_id"],
        layout="timm",
        num_classes=num_classes,
        classes=IMAGENET_1K if num_classes == 1000 else None,
        preprocess=Preprocess(
            tuple(row["input_size"]), tuple(row["mean"]), tuple(row["std"]), row["crop_pct"], row["interpolation"]
        ),
        license=row["license"],
        origin=row["origin"],
    )


def split_tag(name: str) -> tuple[str, str | None]:
    """`deit_tiny_patch16_224.fb_in1k` -> ("deit_tiny_patch16_224", "fb_in1k"); no tag -> (name, None)."""
    base, _, tag = name.partition(".")
    return base, (tag or None)


def select_weights(entry: ModelEntry, tag: str | None) -> Weights:
    """The weights of `entry` tagged `tag` (None: the default), or an error listing what there is."""
    from vitlab.checkpoint import CheckpointError
    from vitlab.registry import UnknownModelError

    if not entry.weights:
        raise CheckpointError(
            f"no published weights are known for {entry.name}; pass the path of a checkpoint with pretrained=PATH"
        )
    if tag is None:
        return entry.weights[0]
    for weights in entry.weights:
        if weights.tag == tag:
            return weights
    tags = ", ".join(f"{entry.name}.{w.tag}" for w in entry.weights)
    raise UnknownModelError(f"{entry.name} has no weights tagged {tag!r}; published: {tags}")
