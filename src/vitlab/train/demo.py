"""`make demo` / `vitlab demo`: a small vision transformer learns the built-in Fashion-MNIST subset
offline in a couple of minutes on two CPU cores, then shows which patches its decisions draw on.
"""

from __future__ import annotations

from pathlib import Path

import torch

DEMO_RECIPE = dict(
    # The design of recipes/fashion-mnist.yaml (93% on the full data): five 3x3 conv-BN-ReLU layers to a
    # 7x7 grid of 64-d tokens, 3 transformer blocks, and a classifier over the flattened tokens.
    model="vitc_tiny_s4_32",
    model_args=dict(
        stem_channels=[16, 32, 32, 64, 64],
        stem_strides=[1, 2, 1, 2, 1],
        embed_dim=64,
        depth=3,
        num_heads=4,
        mlp_ratio=2.0,
        in_chans=1,
        global_pool="flatten",
    ),
    data="demo",
    img_size=28,
    epochs=20,
    batch_size=64,
    lr=2e-3,
    lr_scaling="none",
    warmup_epochs=1,
    min_lr=1e-5,
    weight_decay=0.05,
    crop="pad",
    crop_padding=2,
    hflip=0.5,
    label_smoothing=0.1,
    channels_last=True,
    workers=0,
)


def run_demo(output: str | Path = "runs/demo", epochs: int | None = None) -> dict:
    from vitlab.analysis.attention import attention_rollout
    from vitlab.cli import vitlab_command
    from vitlab.data.augment import EvalPreprocess
    from vitlab.data.datasets import demo_dataset
    from vitlab.registry import load_model
    from vitlab.train.config import make_config
    from vitlab.train.plots import plot_attention
    from vitlab.train.run import train

    output = Path(output)
    values = {**DEMO_RECIPE, "output": str(output)}
    if epochs is not None:
        values["epochs"] = epochs
    resume = (output / "checkpoint-last.pt").exists()
    summary = train(make_config(values), resume=resume)

    model = load_model(output / "model.safetensors").eval()
    test = demo_dataset("test")
    picks = torch.tensor([int((test.labels == c).nonzero()[1]) for c in range(10)])
    images, labels = test.get_batch(picks)
    pre = model.entry.preprocess
    x = EvalPreprocess(model.img_size[0], pre.mean, pre.std, model.in_chans)(images)
    with torch.no_grad():
        predicted = model(x).argmax(-1)
    attention = attention_rollout(model, x)
    titles = [
        f"{test.classes[int(p)]}" + ("" if p == y else f"\n(true: {test.classes[int(y)]})")
        for p, y in zip(predicted, labels, strict=True)
    ]
    picture = output / "attention.png"
    caption = "predicted class; below: attention rollout, how much each patch feeds the classifier"
    plot_attention(images.float() / 255, attention, titles, picture, caption)
    print(
        f"\ndemo: test accuracy {summary['test_top1']:.1f}% on {summary['test_images']} Fashion-MNIST images "
        f"(chance 10%) after {summary['train_seconds']:.0f}s of training.\n"
        f"  curves:     {output / 'curves.png'}\n  attention:  {picture}\n  weights:    {output / 'model.safetensors'}"
        f"\n  try:        {vitlab_command()} eval --checkpoint {output / 'model.safetensors'} --data demo"
    )
    return summary
