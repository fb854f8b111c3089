"""Training configuration: one flat dataclass whose field names are the long command-line options.

A recipe is a YAML file of these keys (`batch_size` or `batch-size`); `vitlab train --config
recipe.yaml --lr 1e-3` takes the recipe and lets the command line override it. The run directory
gets the resolved configuration as `config.yaml`, which `vitlab train --config` accepts again.
"""

from __future__ import annotations

import dataclasses
import types
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

import yaml


class ConfigError(ValueError):
    """A recipe or option that cannot be used; the message names it."""


@dataclass
class TrainConfig:
    # What to train, on what, where to write.
    model: str = "vit_tiny_patch16_224"
    model_args: dict[str, Any] = field(default_factory=dict)  # constructor overrides (embed_dim, depth, ...)
    pretrained: str | None = None  # a checkpoint to start from (fine-tuning); the head is re-initialised if needed
    data: str = "demo"  # demo, mnist, fashion-mnist, cifar10, cifar100, or a directory of image folders
    data_dir: str | None = None
    output: str | None = None
    img_size: int | None = None  # default: the dataset's own size for array datasets, else the model's
    val_fraction: float = 0.1  # held out of a single image folder (no train/val sub-folders) for validation
    holdout: float = 0.0  # mnist, cifar...: fraction of the training split that validates (0: the test split does)
    train_images: int | None = None  # train on this many images only (class-balanced, drawn with --seed)
    skip_bad_images: bool = False
    # Sequence-to-sequence (image-to-sequence models): strips of strip_min..strip_max images side by side.
    strip_min: int = 3
    strip_max: int = 8
    strips: int | None = None  # training strips (default: training images / mean strip length)
    check_images: bool = True  # decode every image of a folder dataset once before training starts
    # Schedule and optimiser. lr is for a batch of `lr_base_batch`, scaled to the batch by `lr_scaling`:
    # the square root by default, as timm scales AdamW (2e-3 at 256 gives 5e-4 at 16, 1e-3 at 64); the
    # DeiT recipe scales linearly (5e-4 at 512).
    seed: int = 0
    epochs: int = 10
    max_steps: int | None = (
        None  # stop after this many optimiser steps (cutting the last epoch short); overrides epochs
    )
    batch_size: int = 128  # images per optimiser step, over all processes and accumulation steps
    accum_steps: int = 1
    lr: float = 2e-3
    lr_base_batch: int = 256
    lr_scaling: str = "sqrt"  # sqrt, linear, none (lr as given)
    min_lr: float = 1e-5
    warmup_epochs: float | None = None  # default: 5% of the run
    warmup_lr: float = 1e-6
    weight_decay: float = 0.05
    opt_eps: float = 1e-8
    opt_betas: tuple[float, float] = (0.9, 0.999)
    clip_grad: float | None = None
    layer_decay: float | None = None  # layer-wise lr decay for fine-tuning, e.g. 0.65
    label_smoothing: float = 0.1
    optimizer: str = "adamw"  # adamw, sgd (with --momentum; mmseg's SETR and Segmenter recipes)
    momentum: float = 0.9
    schedule: str = "cosine"  # cosine, poly (linear warmup, then (1 - progress) ** poly_power down to min_lr)
    poly_power: float = 1.0
    head_lr_mult: float = 1.0  # segmentation: the decoders' learning rate is lr x this (SegFormer: 10)
    # Segmentation augmentation (mmseg's pipeline): --img-size is the side pairs are stored at.
    crop_size: int | None = None  # the training crop (default: --img-size)
    ratio_range: tuple[float, float] = (0.5, 2.0)  # random rescale of each pair before the crop
    cat_max_ratio: float = 0.75  # retry a crop where one class covers more than this of its labels
    photometric: bool = True  # brightness, contrast, saturation, hue (images only)
    # Regularisation and augmentation.
    drop_path: float | None = None
    ema: bool = False
    ema_decay: float = 0.99996
    crop: str = "rrc"  # rrc (random resized crop), pad (random translation with zero padding), none
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    crop_padding: int = 4
    hflip: float = 0.5
    color_jitter: float = 0.0
    rand_augment: str | None = None  # e.g. "rand-m9-n2" (timm's magnitude scale 0-10)
    reprob: float = 0.0  # random erasing probability (per image, pixel noise, after normalisation)
    mixup: float = 0.0  # Beta(alpha, alpha) of Mixup; 0 disables
    cutmix: float = 0.0  # Beta(alpha, alpha) of CutMix; 0 disables
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    repeated_aug: int = 1  # repeated augmentation (Hoffer et al.): each image this many times per epoch
    # Distillation (DeiT section 4) and patch diversification (Gong et al. 2021).
    teacher: str | None = None
    teacher_checkpoint: str | None = None
    teacher_args: dict[str, Any] = field(default_factory=dict)
    distillation: str = "none"  # none, soft, hard
    distillation_alpha: float = 0.5
    distillation_tau: float = 1.0
    patch_cosine: float = 0.0  # weights of the three diversity losses; 0 disables
    patch_contrastive: float = 0.0
    patch_mixing: float = 0.0
    # Machinery.
    amp: str = "auto"  # auto (bf16 where the hardware runs it natively, else float32), none, bf16, fp16
    grad_checkpointing: bool = False
    channels_last: bool = False  # NHWC memory format; measured faster on this CPU only for VT-ResNet inference
    compile: bool = False  # torch.compile (inductor) the training forward and backward; evaluation runs eagerly
    device: str = "auto"
    workers: int = 2
    eval_batch_size: int | None = None
    val_every: int = 1  # validate every N epochs (and after the last): many short epochs of a small subset
    checkpoint_every: int = 0  # also write checkpoint-last.pt every N optimiser steps inside an epoch
    progress: str = "auto"  # auto (bars on a terminal), on, off

    def effective_lr(self) -> float:
        ratio = self.batch_size / self.lr_base_batch
        return self.lr * {"none": 1.0, "linear": ratio, "sqrt": ratio**0.5}[self.lr_scaling]

    def total_steps(self, steps_per_epoch: int) -> int:
        """Optimiser steps of the whole run: `max_steps`, or `epochs` whole epochs."""
        return self.max_steps if self.max_steps is not None else self.epochs * steps_per_epoch

    def num_epochs(self, steps_per_epoch: int) -> int:
        """Epochs the run starts (the last one partly, when `max_steps` cuts it)."""
        return -(-self.total_steps(steps_per_epoch) // steps_per_epoch)

    def warmup_steps(self, steps_per_epoch: int) -> int:
        """Steps of linear warmup: `warmup_epochs` epochs, by default 5% of the run."""
        if self.warmup_epochs is None:
            return round(0.05 * self.total_steps(steps_per_epoch))
        return round(self.warmup_epochs * steps_per_epoch)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for key, value in out.items():
            if isinstance(value, tuple):
                out[key] = list(value)
        return out


FIELDS = {f.name: f for f in fields(TrainConfig)}
_HINTS = get_type_hints(TrainConfig)
# Options that may differ when a run is resumed: they do not change what is computed.
RESUMABLE_CHANGES = {"output", "device", "workers", "progress", "data_dir", "eval_batch_size", "check_images"}
CHOICES = {
    "crop": ("rrc", "pad", "none"),
    "lr_scaling": ("sqrt", "linear", "none"),
    "distillation": ("none", "soft", "hard"),
    "amp": ("auto", "none", "bf16", "fp16"),
    "progress": ("auto", "on", "off"),
    "optimizer": ("adamw", "sgd"),
    "schedule": ("cosine", "poly"),
}


def option_kind(name: str) -> type:
    """What an option holds, from its annotation: bool, int, float, str, tuple or dict (`| None` dropped)."""
    hint = _HINTS[name]
    if isinstance(hint, types.UnionType):
        hint = next(arg for arg in hint.__args__ if arg is not type(None))
    return getattr(hint, "__origin__", hint)


def _coerce(name: str, value: Any) -> Any:
    kind = option_kind(name)
    if value is None:
        return None
    if kind is tuple:
        size = len(FIELDS[name].default)
        if not isinstance(value, list | tuple) or len(value) != size:
            raise ConfigError(f"option {name} takes {size} numbers, got {value!r}")
        return tuple(float(v) for v in value)
    if kind is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"option {name} takes a mapping, got {value!r}")
        return dict(value)
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"option {name} takes true or false, got {value!r}")
        return value
    try:
        if kind is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if kind is float:
            return float(value)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"option {name}: {value!r} is not a number") from err
    return str(value) if not isinstance(value, str) else value


def make_config(values: dict[str, Any], source: str = "options") -> TrainConfig:
    """A TrainConfig from a mapping of option names (dashes or underscores); unknown keys are errors."""
    kwargs = {}
    for key, value in values.items():
        name = key.replace("-", "_")
        if name not in FIELDS:
            close = [f for f in FIELDS if name.split("_")[0] in f][:5]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ConfigError(f"{source}: unknown option {key!r}{hint}")
        kwargs[name] = _coerce(name, value)
    config = TrainConfig(**kwargs)
    validate(config)
    return config


def validate(config: TrainConfig) -> None:
    for name, allowed in CHOICES.items():
        if getattr(config, name) not in allowed:
            raise ConfigError(f"option {name} must be one of {', '.join(allowed)}, got {getattr(config, name)!r}")
    positive = ["epochs", "max_steps", "batch_size", "accum_steps", "repeated_aug", "val_every", "train_images"]
    positive += ["strips", "crop_size"]
    for name in positive:
        if getattr(config, name) is not None and getattr(config, name) < 1:
            raise ConfigError(f"option {name} must be at least 1, got {getattr(config, name)}")
    for name in ("lr", "lr_base_batch", "head_lr_mult", "poly_power", "cat_max_ratio"):
        if getattr(config, name) is not None and getattr(config, name) <= 0:
            raise ConfigError(f"option {name} must be positive, got {getattr(config, name)}")
    for name in ("min_lr", "warmup_lr", "weight_decay", "label_smoothing", "warmup_epochs", "drop_path"):
        if getattr(config, name) is not None and getattr(config, name) < 0:
            raise ConfigError(f"option {name} must not be negative, got {getattr(config, name)}")
    if config.distillation != "none" and not config.teacher:
        raise ConfigError("distillation needs a teacher: pass --teacher NAME (and --teacher-checkpoint PATH)")
    if config.batch_size % config.accum_steps:
        raise ConfigError(f"batch size {config.batch_size} is not divisible by accum_steps {config.accum_steps}")
    if not 0.0 <= config.val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in [0, 1), got {config.val_fraction}")
    if not 0.0 < config.ratio_range[0] <= config.ratio_range[1]:
        raise ConfigError(f"ratio_range must be two positive numbers, low then high, got {list(config.ratio_range)}")
    if not 0.0 <= config.holdout < 1.0:
        raise ConfigError(f"holdout must be in [0, 1), got {config.holdout}")


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from err
    if not isinstance(values, dict):
        raise ConfigError(f"{path} must hold a mapping of option names to values")
    make_config(values, str(path))  # report unknown keys with the file's name
    return values


def save_yaml(config: TrainConfig, path: str | Path) -> None:
    values = config.to_dict()
    values.pop("output", None)  # rerunning the file into the same directory would overwrite the run
    text = "# vitlab train --config this-file --output NEW_DIR  reruns this run\n"
    text += yaml.safe_dump(values, sort_keys=False)
    from vitlab.train.checkpoint import atomic_write_bytes

    atomic_write_bytes(Path(path), text.encode())
