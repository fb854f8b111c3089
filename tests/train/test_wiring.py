"""Each training option does what it says: checked against the value computed by hand on the same batch.

These would fail if the engine ignored the teacher, swapped DeiT's two heads, dropped a diversity
loss, or turned accumulation, checkpointing, channels-last or bf16 into no-ops.
"""

import pytest
import torch
import torch.nn.functional as F

import vitlab
from tests.helpers import assert_same_weights, count_saved_tensors
from tests.train.tiny import TINY_VIT, write_mnist
from vitlab.data.loader import train_batches
from vitlab.train.config import make_config
from vitlab.train.distributed import DistInfo
from vitlab.train.loop import fit
from vitlab.train.losses import PatchMixingLoss, patch_contrastive_loss, patch_cosine_loss
from vitlab.train.run import prepare
from vitlab.train.rundir import RunDir

BASE = dict(
    model="vit_tiny_patch16_224",
    data="mnist",
    epochs=1,
    batch_size=16,
    lr=1e-2,
    lr_scaling="none",
    warmup_epochs=0,
    crop="none",
    hflip=0.0,
    label_smoothing=0.0,
    workers=0,
    progress="off",
    amp="none",
)


def prepared(tmp_path, name="run", **options):
    data = tmp_path / "data"
    if not data.exists():
        write_mnist(data, train=64)
    values = {**BASE, "model_args": TINY_VIT, "data_dir": str(data), "output": str(tmp_path / name), **options}
    return prepare(make_config(values), resume=False, info=DistInfo())


def first_batch(run):
    batches = train_batches(run.data.train, batch_size=16, seed=run.config.seed, epoch=0, workers=0)
    return next(batches)


def normalised(images, mean=0.5, std=0.5):
    """What the (crop-free, flip-free) augmentation makes of a grey uint8 batch, by hand."""
    return (images.float() / 255 - mean) / std


@pytest.fixture
def teacher_file(tmp_path):
    """A ConvNet teacher saved as a vitlab run saves its model (name, arguments, classes)."""
    torch.manual_seed(5)
    args = dict(widths=(8, 16), in_chans=1, num_classes=10)
    model = vitlab.create_model("convnet_tiny", **args)
    RunDir(tmp_path / "teacher").write_weights(model.state_dict(), [str(i) for i in range(10)], "convnet_tiny", args)
    return tmp_path / "teacher" / "model.safetensors", model.eval()


@pytest.mark.parametrize("kind", ["soft", "hard"])
def test_the_distillation_loss_is_the_papers_on_the_teachers_logits(tmp_path, teacher_file, kind):
    path, teacher = teacher_file
    run = prepared(
        tmp_path, model_args={**TINY_VIT, "distilled": True}, teacher="convnet_tiny", teacher_checkpoint=str(path),
        distillation=kind, distillation_alpha=0.3, distillation_tau=2.0,
    )  # fmt: skip
    images, labels = first_batch(run)
    x = normalised(images)
    with torch.no_grad():
        cls_logits, dist_logits = run.state.model.train()(x)
        # The teacher sees the same images under its own (ImageNet, averaged to one channel) normalisation.
        mean, std = torch.tensor((0.485, 0.456, 0.406)).mean(), torch.tensor((0.229, 0.224, 0.225)).mean()
        t = teacher(normalised(images, mean, std))
        base = F.cross_entropy(cls_logits, labels.long())
        if kind == "soft":
            kl = F.kl_div(
                F.log_softmax(dist_logits / 2, -1), F.log_softmax(t / 2, -1), reduction="sum", log_target=True
            )
            distill = kl * 4 / dist_logits.numel()  # the official code's normalisation: by B x C
            assert not torch.isclose(distill, kl * 4 / len(labels))  # (the batch mean would be C times larger)
        else:
            distill = F.cross_entropy(dist_logits, t.argmax(-1))
        expected = 0.7 * base + 0.3 * distill
        actual = run.task.loss(run.module, images, labels, run.amp)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)


def test_the_teacher_moves_the_distillation_head_only(tmp_path, teacher_file):
    path, _ = teacher_file
    grads = []
    for seed in (1, 2):  # two different teachers
        torch.manual_seed(seed)
        other = vitlab.create_model("convnet_tiny", widths=(8, 16), in_chans=1, num_classes=10)
        RunDir(tmp_path / f"t{seed}").write_weights(
            other.state_dict(), [str(i) for i in range(10)], "convnet_tiny", dict(widths=(8, 16), in_chans=1)
        )
        run = prepared(
            tmp_path, f"run{seed}", model_args={**TINY_VIT, "distilled": True}, teacher="convnet_tiny",
            teacher_checkpoint=str(tmp_path / f"t{seed}" / "model.safetensors"), distillation="soft",
        )  # fmt: skip
        images, labels = first_batch(run)
        run.task.loss(run.module, images, labels, run.amp).backward()
        model = run.state.model
        grads.append((model.head.weight.grad.clone(), model.head_dist.weight.grad.clone()))
    (cls_a, dist_a), (cls_b, dist_b) = grads
    torch.testing.assert_close(cls_a, cls_b)  # the class head learns from the labels alone
    assert not torch.allclose(dist_a, dist_b)  # the distillation head learns from the teacher


def test_each_diversity_weight_adds_exactly_weight_times_its_loss(tmp_path):
    weights = dict(patch_cosine=0.3, patch_contrastive=0.2, patch_mixing=0.5)
    run = prepared(tmp_path, cutmix=1.0, **weights)
    images, labels = first_batch(run)
    torch.manual_seed(11)
    actual = run.task.loss(run.module, images, labels, run.amp)
    torch.manual_seed(11)  # the same CutMix box, by hand
    x, targets, patch_targets = run.task.mixup(normalised(images), labels, with_patches=True)
    logits, first, last = run.state.model.forward_patch_tokens(x)
    base = torch.sum(-targets * F.log_softmax(logits, -1), -1).mean()
    mixing = PatchMixingLoss.forward(run.task.mixing, last, patch_targets)
    expected = base + 0.3 * patch_cosine_loss(last) + 0.2 * patch_contrastive_loss(last, first) + 0.5 * mixing
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)


def test_accumulation_feeds_k_micro_batches_and_equals_the_whole_batch(tmp_path):
    whole = prepared(tmp_path, "whole")
    fit(whole)
    accum = prepared(tmp_path, "accum", accum_steps=4)
    sizes = []
    loss = accum.task.loss

    def spy(module, images, labels, amp):
        sizes.append(len(images))
        return loss(module, images, labels, amp)

    accum.task.loss = spy
    fit(accum)
    assert sizes == [4] * (4 * 4)  # 4 steps of 4 micro-batches of 4 images
    assert_same_weights(whole.state.model.state_dict(), accum.state.model.state_dict(), TINY_VIT["embed_dim"])


def saved_tensors_of_a_step(run) -> int:
    images, labels = first_batch(run)
    return count_saved_tensors(lambda: run.task.loss(run.module, images, labels, run.amp))[1]


def test_grad_checkpointing_stores_fewer_activations(tmp_path):
    args = {**TINY_VIT, "depth": 3}
    plain = prepared(tmp_path, "plain", model_args=args)
    checkpointed = prepared(tmp_path, "ckpt", model_args=args, grad_checkpointing=True)
    assert checkpointed.state.model.grad_checkpointing and not plain.state.model.grad_checkpointing
    assert saved_tensors_of_a_step(checkpointed) < saved_tensors_of_a_step(plain)


def test_channels_last_changes_the_memory_format(tmp_path):
    stem = {"stem_channels": [8, 16], "embed_dim": 32, "depth": 1, "num_heads": 2, "in_chans": 1, "img_size": 8}
    run = prepared(tmp_path, model="vitc_tiny_s4_32", model_args=stem, channels_last=True)
    conv = run.state.model.patch_embed.convs[0]
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and conv.weight.shape[-1] > 1
    seen = []
    conv.register_forward_pre_hook(
        lambda m, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last))
    )
    run.task.loss(run.module, *first_batch(run), run.amp)
    assert seen == [True]


def test_bf16_autocast_computes_in_bf16(tmp_path):
    run = prepared(tmp_path, amp="bf16")
    dtypes = []
    run.state.model.blocks[0].attn.qkv.register_forward_hook(lambda m, args, out: dtypes.append(out.dtype))
    run.task.loss(run.module, *first_batch(run), run.amp)
    assert dtypes == [torch.bfloat16]


def test_amp_auto_picks_bf16_only_where_it_is_native(monkeypatch):
    from vitlab.train import precision

    cpu = torch.device("cpu")
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    assert precision.resolve_amp("auto", cpu) == "none"
    with pytest.warns(UserWarning, match="without native bfloat16"):
        assert precision.resolve_amp("bf16", cpu) == "bf16"
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    assert precision.resolve_amp("auto", cpu) == "bf16"


def test_patch_mixing_needs_cutmix_and_patch_tokens(tmp_path):
    from vitlab.train.config import ConfigError

    with pytest.raises(ConfigError, match="needs --cutmix"):
        prepared(tmp_path, patch_mixing=0.5)
    swin = dict(embed_dim=8, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1), in_chans=1, window_size=2)
    with pytest.raises(ConfigError, match="SwinTransformer has none"):
        prepared(tmp_path, model="swin_tiny_patch4_window7_224", model_args=swin, patch_mixing=0.5, cutmix=1.0)


def test_patch_mixing_on_a_side_that_is_not_a_multiple_of_the_patch(tmp_path):
    run = prepared(tmp_path, model_args={**TINY_VIT, "patch_size": 3}, patch_mixing=0.5, cutmix=1.0)
    assert run.state.model.grid_size == (3, 3)  # 8 px at patch 3: padded to 9
    loss = run.task.loss(run.module, *first_batch(run), run.amp)
    assert torch.isfinite(loss)


def test_a_warmup_that_covers_most_of_the_run_warns(tmp_path):
    with pytest.warns(UserWarning, match=r"warmup \(5 epochs\) covers most of the 2-epoch run"):
        prepared(tmp_path, epochs=2, warmup_epochs=5)
