"""Sequence-to-sequence: the original encoder-decoder Transformer (Vaswani et al. 2017), the recurrent
encoder-decoders it replaced (LSTM and GRU with Bahdanau or Luong attention), image-to-sequence
(a ViT reads a strip of images, a Transformer decoder writes their labels), and decoding (greedy,
beam search with a length penalty, a key/value cache). Importing this package registers the
named variants (task "sequence-to-sequence")."""

from vitlab.seq2seq import image, rnn, transformer  # noqa: F401  (registers the variants)
from vitlab.seq2seq.base import BOS, EOS, PAD, Memory, Seq2SeqModel
from vitlab.seq2seq.decoding import beam_search, greedy_decode

__all__ = ["BOS", "EOS", "PAD", "Memory", "Seq2SeqModel", "beam_search", "greedy_decode"]
