"""Reading an image into a sequence: a ViT (or a ViT with a convolutional stem) encodes a strip of
images laid side by side, and a Transformer decoder writes their labels in order.

The encoder is vitlab's own `VisionTransformer`, built for a strip `img_size` high and
`img_size * max_images` wide, without a classifier: its final tokens (the class token and every
patch) are the memory the decoder's cross-attention reads. Which patches each output label looks
at is what `vitlab predict` draws (`capture_attention`, `cross_attn` of the decoder layers).

The target vocabulary is the image classes plus the three special tokens: class c is token c + 3.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from vitlab.models.vit import VisionTransformer, conv_stem_vit
from vitlab.registry import Preprocess, register_model
from vitlab.seq2seq.base import Memory, Seq2SeqModel, check_tokens
from vitlab.seq2seq.layers import TransformerDecoder
from vitlab.seq2seq.transformer import PositionalEncoding, TokenEmbedding, xavier_init

ENCODERS = ("vit", "conv")
NUM_SPECIAL = 3


class ImageToSequence(Seq2SeqModel):
    """A strip of up to `max_images` images of side `img_size` in, the sequence of their classes out."""

    def __init__(
        self,
        num_classes: int = 10,
        img_size: int = 28,
        max_images: int = 8,
        in_chans: int = 1,
        encoder: str = "vit",
        patch_size: int = 7,
        stem_channels: tuple[int, ...] = (16, 32, 32),
        embed_dim: int = 64,
        depth: int = 2,
        num_heads: int = 4,
        mlp_ratio: float = 2.0,
        decoder_layers: int = 2,
        decoder_heads: int = 4,
        ffn_dim: int = 128,
        dropout: float = 0.1,
        drop_path_rate: float = 0.0,
        norm_first: bool = True,
    ):
        super().__init__()
        if encoder not in ENCODERS:
            raise ValueError(f"encoder must be one of {ENCODERS}, got {encoder!r}")
        if isinstance(img_size, list | tuple):
            img_size = img_size[0]  # the strip's height: one image's side
        self.num_classes, self.img_size, self.max_images, self.in_chans = num_classes, img_size, max_images, in_chans
        self.tgt_vocab_size = num_classes + NUM_SPECIAL
        self.max_target_len = max_images + 1  # BOS and a label per image (or the labels and EOS)
        strip = (img_size, img_size * max_images)
        common = dict(img_size=strip, in_chans=in_chans, num_classes=0, embed_dim=embed_dim, depth=depth,
                      num_heads=num_heads, mlp_ratio=mlp_ratio, drop_path_rate=drop_path_rate)  # fmt: skip
        if encoder == "vit":
            self.encoder = VisionTransformer(patch_size=patch_size, **common)
        else:
            self.encoder = conv_stem_vit(stem_channels=stem_channels, **common)
        self.input_conv = f"encoder.{self.encoder.input_conv}"
        self.min_input_size = self.encoder.min_input_size
        positions = PositionalEncoding("learned", embed_dim, self.max_target_len, "target")
        self.tgt_embed = TokenEmbedding(self.tgt_vocab_size, embed_dim, dropout, positions)
        self.decoder = TransformerDecoder(decoder_layers, embed_dim, final_norm=norm_first, num_heads=decoder_heads,
                                          ffn_dim=ffn_dim, dropout=dropout, norm_first=norm_first)  # fmt: skip
        xavier_init(self.decoder)
        self.generator = torch.nn.Linear(embed_dim, self.tgt_vocab_size)

    @property
    def strip_size(self) -> tuple[int, int]:
        """The (height, width) of the strips the model is built for."""
        return self.img_size, self.img_size * self.max_images

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.encoder.set_grad_checkpointing(enable)
        self.decoder.grad_checkpointing = enable

    def encode(self, src: Tensor, src_padding: Tensor | None = None) -> Memory:
        """The encoder's final tokens (class token first) for images (batch, in_chans, height, width)."""
        if src_padding is not None:
            raise ValueError("an image source takes no src_padding: blank space in a strip is part of the image")
        if src.ndim != 4 or not src.dtype.is_floating_point:
            raise ValueError(f"src must be float images (batch, {self.in_chans}, height, width), got {src.dtype} "
                             f"{tuple(src.shape)}")  # fmt: skip
        return Memory(self.encoder.forward_features(src))

    def decode(self, tgt: Tensor, memory: Memory, cache: dict[str, Any] | None = None) -> Tensor:
        check_tokens(tgt, self.tgt_vocab_size, "tgt")
        if tgt.shape[0] != memory.states.shape[0]:  # not len(): a Python int would fix the batch in torch.export
            raise ValueError(f"tgt has {tgt.shape[0]} sequences, the encoded images {memory.states.shape[0]}")
        offset = cache["length"] if cache is not None else 0
        x = self.tgt_embed(tgt, offset)
        state = cache.setdefault("layers", {}) if cache is not None else None
        x = self.decoder(x, memory.states, None, None, state)
        if cache is not None:
            cache["length"] = offset + tgt.shape[1]
        return self.generator(x)

    def block_order(self) -> list[list[str]]:
        encoder = [[f"encoder.{n}" for n in group] for group in self.encoder.block_order()]
        names = [n for n, _ in self.named_parameters()]
        layers = [[n for n in names if n.startswith(f"decoder.layers.{i}.")] for i in range(len(self.decoder.layers))]
        placed = {n for g in encoder + layers for n in g}
        return [*encoder[:-1], *layers, encoder[-1] + [n for n in names if n not in placed]]

    def no_weight_decay(self) -> set[str]:
        return {f"encoder.{n}" for n in self.encoder.no_weight_decay()}

    def example_inputs(self, batch: int = 1) -> tuple[Tensor, ...]:
        device = next(self.parameters()).device
        images = torch.zeros(batch, self.in_chans, *self.strip_size, device=device)
        return images, torch.full((batch, self.max_target_len), NUM_SPECIAL, dtype=torch.long, device=device)

    @property
    def example_size(self) -> tuple[int, ...]:
        return (self.in_chans, *self.strip_size)


IMAGE_TO_SEQUENCE = "image-to-sequence: a ViT reads a strip, a Transformer decoder (Vaswani et al. 2017) writes"
STRIPS = Preprocess(input_size=(1, 28, 28 * 8), mean=(0.5,), std=(0.5,), crop_pct=1.0)
_TINY = dict(embed_dim=16, depth=1, num_heads=2, decoder_layers=1, decoder_heads=2, ffn_dim=32, max_images=3)

register_model(
    "image_to_sequence_vit", ImageToSequence, dict(encoder="vit", patch_size=7), IMAGE_TO_SEQUENCE,
    task="sequence-to-sequence", tiny=_TINY, preprocess=STRIPS, num_classes=10,
)  # fmt: skip
register_model(
    "image_to_sequence_conv", ImageToSequence, dict(encoder="conv", stem_channels=(16, 32, 32)), IMAGE_TO_SEQUENCE,
    task="sequence-to-sequence", tiny={**_TINY, "stem_channels": (4, 8, 8)}, preprocess=STRIPS, num_classes=10,
)  # fmt: skip
