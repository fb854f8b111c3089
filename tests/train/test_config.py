"""Recipes are YAML files of the long options; the command line overrides them."""

from pathlib import Path

import pytest

from vitlab.train.config import ConfigError, TrainConfig, load_yaml, make_config

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


@pytest.mark.parametrize("path", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.name)
def test_recipes_are_valid(path):
    config = make_config(load_yaml(path), str(path))
    assert config.epochs >= 1


def test_the_deit_recipe_is_the_published_one():
    config = make_config(load_yaml(RECIPES / "deit_imagenet.yaml"))
    assert config.effective_lr() == pytest.approx(1e-3)  # 5e-4 x 1024 / 512
    assert (config.mixup, config.cutmix, config.drop_path, config.reprob) == (0.8, 1.0, 0.1, 0.25)
    assert (config.ema, config.ema_decay, config.warmup_epochs, config.weight_decay) == (True, 0.99996, 5, 0.05)
    assert config.label_smoothing == 0.1 and config.repeated_aug == 3 and config.clip_grad is None


def test_options_are_checked():
    assert make_config({"batch-size": 64}).batch_size == 64
    assert make_config({"scale": [0.5, 1]}).scale == (0.5, 1.0)
    with pytest.raises(ConfigError, match="unknown option 'bach_size'"):
        make_config({"bach_size": 64})
    with pytest.raises(ConfigError, match="crop must be one of rrc, pad, none"):
        make_config({"crop": "random"})
    with pytest.raises(ConfigError, match="distillation needs a teacher"):
        make_config({"distillation": "hard"})
    with pytest.raises(ConfigError, match="epochs: 'ten' is not a number"):
        make_config({"epochs": "ten"})
    assert TrainConfig(batch_size=256, lr=5e-4, lr_base_batch=512, lr_scaling="linear").effective_lr() == 2.5e-4
    assert TrainConfig(batch_size=16, lr=1e-3, lr_scaling="none").effective_lr() == 1e-3
    with pytest.raises(ConfigError, match="lr_scaling must be one of sqrt, linear, none"):
        make_config({"lr_scaling": "log"})


def test_the_defaults_suit_a_short_run_at_any_batch():
    """2e-3 at batch 256 scaled by the square root (timm's rule for AdamW), warmup 5% of the run: on the
    demo data, 10 epochs reached 74.0% at batch 16 (the former linear rule with 5 warmup epochs: 58.4%)."""
    assert TrainConfig(batch_size=16).effective_lr() == pytest.approx(5e-4)
    assert TrainConfig(batch_size=64).effective_lr() == pytest.approx(1e-3)
    assert TrainConfig(epochs=10).warmup_steps(steps_per_epoch=20) == 10  # half an epoch of 20 steps
    assert TrainConfig(epochs=300, warmup_epochs=5).warmup_steps(steps_per_epoch=20) == 100
    assert TrainConfig(max_steps=300).warmup_steps(steps_per_epoch=20) == 15  # 5% of the steps, not of epochs


def test_max_steps_overrides_epochs_and_cuts_the_last_epoch():
    config = TrainConfig(epochs=10, max_steps=50)
    assert (config.total_steps(20), config.num_epochs(20)) == (50, 3)  # 20 + 20 + 10
    assert (config.total_steps(25), config.num_epochs(25)) == (50, 2)
    assert TrainConfig(epochs=10).total_steps(20) == 200
    with pytest.raises(ConfigError, match="max_steps must be at least 1"):
        make_config({"max_steps": 0})


def test_optional_options_take_the_type_of_their_annotation():
    from vitlab.cli import build_parser

    parsed = build_parser().parse_args(
        ["train", "--eval-batch-size", "256", "--img-size", "32", "--clip-grad", "1", "--layer-decay", "0.65"]
    )
    assert (parsed.eval_batch_size, parsed.img_size, parsed.clip_grad, parsed.layer_decay) == (256, 32, 1.0, 0.65)
    config = make_config({"eval_batch_size": "128", "drop_path": 0, "teacher": "convnet_tiny", "distillation": "soft"})
    assert config.eval_batch_size == 128 and isinstance(config.drop_path, float) and config.teacher == "convnet_tiny"
    with pytest.raises(ConfigError, match="eval_batch_size: 'many' is not a number"):
        make_config({"eval_batch_size": "many"})
