"""The pre-norm transformer block, and running a stack of blocks with activation checkpointing."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager, nullcontext

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from vitlab.layers.drop import DropPath, LayerScale


class PreNormBlock(nn.Module):
    """x + MSA(LN(x)), then x + MLP(LN(x)) (ViT eq. 2-3), each branch with layer scale and drop path.

    The attention and the MLP are given as modules, so a family's block is this block with its own
    attention (windows, stripes, pales, ...). Parameter names are timm's (`norm1`, `attn`, `ls1`,
    `norm2`, `mlp`, `ls2`), which ViT, DeiT and Swin checkpoints use.
    """

    def __init__(
        self,
        dim: int,
        attn: nn.Module,
        mlp: nn.Module,
        drop_path: float = 0.0,
        init_values: float | None = None,
        norm_layer: type[nn.Module] = nn.LayerNorm,
    ):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = attn
        self.ls1 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path1 = DropPath(drop_path)
        self.norm2 = norm_layer(dim)
        self.mlp = mlp
        self.ls2 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path2 = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x))))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


@contextmanager
def frozen_batch_norm_statistics(module: nn.Module) -> Iterator[None]:
    """Batch norms inside `module` keep the running statistics they had on entry.

    Checkpointing recomputes a block's forward pass during the backward pass; without this, every
    BatchNorm in it would update its running statistics (and `num_batches_tracked`) a second time.
    The recomputation itself normalises exactly as the first pass did, with the batch's statistics:
    only the buffers are put back afterwards.
    """
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    saved = [[b.clone() for b in (m.running_mean, m.running_var, m.num_batches_tracked)] for m in norms]
    try:
        yield
    finally:
        with torch.no_grad():
            for norm, (mean, var, count) in zip(norms, saved, strict=True):
                norm.running_mean.copy_(mean)
                norm.running_var.copy_(var)
                norm.num_batches_tracked.copy_(count)


def run_blocks(blocks: Iterable[nn.Module], x: Tensor, checkpointing: bool = False) -> Tensor:
    """Apply `blocks` in order; with `checkpointing` (and gradients on), keep only each block's input.

    Activation checkpointing trades compute for memory: each block's activations are recomputed
    in the backward pass instead of being stored. Dropout masks are replayed (the RNG state is
    restored) and batch norms do not count the recomputation as another batch, so gradients and
    buffers are those of the plain forward pass.
    """
    use_checkpoint = checkpointing and torch.is_grad_enabled()
    for block in blocks:
        if use_checkpoint:

            def contexts(block: nn.Module = block) -> tuple:
                return nullcontext(), frozen_batch_norm_statistics(block)

            x = checkpoint(block, x, use_reentrant=False, context_fn=contexts)
        else:
            x = block(x)
    return x
