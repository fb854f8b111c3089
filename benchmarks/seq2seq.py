"""The claims that made the Transformer replace recurrent sequence models, measured on this machine.

1. Parallelism ("speed"): training time per step and per epoch of the Transformer against GRU and
   LSTM encoder-decoders (Bahdanau attention) of about the same parameter count, for sequence
   lengths 16 to 512. A step is forward, backward and an AdamW update on a batch of source/target
   pairs of that length; an epoch is `--epoch-tokens` target tokens (so longer sequences mean fewer
   steps). The recurrent models must run their decoder one position after another; the Transformer
   computes every position at once.
2. Path length ("distance"): the delayed-copy task: position i must output the token the source had
   at position i - d. Each encoder stack (Transformer self-attention: a path of one step between
   any two positions; GRU/LSTM: d steps, only the forward direction carries the past) is trained
   with a per-position linear read-out for `--copy-steps` steps and scored on fresh sequences,
   for each distance d. (The encoder alone: with the decoder's attention over the source, both
   kinds would have one-step paths.)
3. Decoding with the key/value cache ("cache"): greedy decoding tokens per second of the same
   Transformer with and without the cache, for output lengths `--decode-lengths`.

Defaults are sized for about ten minutes on 2 CPU cores; `--quick` runs a seconds-long smoke test.
Writes a Markdown table per claim to stdout and, with `--output DIR`, CSVs and one plot per claim.

    python benchmarks/seq2seq.py --output runs/seq2seq-bench
"""

from __future__ import annotations

import argparse
import csv
import math
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from common import median_seconds, print_table
from torch import nn

from vitlab.seq2seq.base import BOS, EOS, PAD, label_smoothed_loss
from vitlab.seq2seq.rnn import RecurrentSeq2Seq
from vitlab.seq2seq.transformer import TransformerSeq2Seq

VOCAB = 32


def transformer(d_model: int, layers: int) -> TransformerSeq2Seq:
    return TransformerSeq2Seq(VOCAB, d_model=d_model, num_heads=4, num_encoder_layers=layers,
                              num_decoder_layers=layers, ffn_dim=2 * d_model, dropout=0.0, norm_first=True,
                              max_len=4096)  # fmt: skip


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def rnn_params(cell: str, hidden: int) -> int:
    with torch.device("meta"):
        return params(RecurrentSeq2Seq(VOCAB, cell=cell, embed_dim=hidden // 2, hidden_size=hidden))


def build_rnn(cell: str, target: int) -> RecurrentSeq2Seq:
    """The GRU/LSTM encoder-decoder (Bahdanau attention, embeddings half the hidden size) whose hidden size
    brings its parameter count closest to `target`."""
    hidden = min(range(8, 513, 4), key=lambda h: abs(rnn_params(cell, h) - target))
    return RecurrentSeq2Seq(VOCAB, cell=cell, attention="bahdanau", embed_dim=hidden // 2, hidden_size=hidden)


def random_pairs(batch: int, length: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    src = torch.randint(3, VOCAB, (batch, length), generator=generator)
    tgt = torch.cat([torch.full((batch, 1), BOS), src[:, :-1]], dim=1)  # teacher-forced copy
    return src, tgt


def step_seconds(model: nn.Module, batch: int, length: int, repeats: int) -> float:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    src, tgt = random_pairs(batch, length, torch.Generator().manual_seed(0))

    def step() -> None:
        loss = label_smoothed_loss(model(src, tgt), src, 0.1)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return median_seconds(step, warmup=1, repeats=repeats)


def parallelism(args) -> list[dict]:
    reference = transformer(args.d_model, args.layers)
    models = {"Transformer": reference}
    models.update({cell.upper(): build_rnn(cell, params(reference)) for cell in ("gru", "lstm")})
    rows = []
    for length in args.lengths:
        steps = math.ceil(args.epoch_tokens / (args.batch_size * length))
        for name, model in models.items():
            seconds = step_seconds(model.train(), args.batch_size, length, args.repeats)
            rows.append(dict(model=name, params=params(model), length=length, step_ms=1000 * seconds,
                             epoch_s=steps * seconds, steps_per_epoch=steps))  # fmt: skip
            print(f"  {name} length {length}: {1000 * seconds:.1f} ms/step", flush=True)
    return rows


class EncoderProbe(nn.Module):
    """An encoder stack and a linear read-out per position (the delayed-copy task)."""

    def __init__(self, kind: str, d_model: int, layers: int):
        super().__init__()
        self.kind = kind
        if kind == "Transformer":
            self.model = transformer(d_model, layers)
            width = d_model
        else:
            self.model = RecurrentSeq2Seq(VOCAB, cell=kind.lower(), embed_dim=d_model, hidden_size=d_model,
                                          num_layers=layers)  # fmt: skip
            width = 2 * d_model
        self.readout = nn.Linear(width, VOCAB)

    def forward(self, src: torch.Tensor) -> torch.Tensor:
        if self.kind == "Transformer":
            states = self.model.transformer.encoder(self.model.src_embed(src))
        else:
            states = self.model.encoder(self.model.src_embed(src))[0]
        return self.readout(states)


def delayed_copy(batch: int, length: int, distance: int, generator: torch.Generator):
    src = torch.randint(3, VOCAB, (batch, length), generator=generator)
    target = torch.full_like(src, PAD)
    target[:, distance:] = src[:, :-distance]
    return src, target


def path_length(args) -> list[dict]:
    rows = []
    for distance in args.distances:
        for kind in ("Transformer", "GRU", "LSTM"):
            torch.manual_seed(0)
            probe = EncoderProbe(kind, args.d_model, args.layers)
            optimizer = torch.optim.AdamW(probe.parameters(), lr=args.copy_lr)
            generator = torch.Generator().manual_seed(distance)
            began = time.perf_counter()
            for _ in range(args.copy_steps):
                src, target = delayed_copy(args.batch_size, args.copy_length, distance, generator)
                loss = F.cross_entropy(probe(src).transpose(1, 2), target, ignore_index=PAD)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            src, target = delayed_copy(
                256, args.copy_length, distance, torch.Generator().manual_seed(10_000 + distance)
            )
            with torch.no_grad():
                predicted = probe.eval()(src).argmax(-1)
            keep = target != PAD
            accuracy = 100.0 * float((predicted == target)[keep].float().mean())
            rows.append(dict(model=kind, distance=distance, accuracy=accuracy, params=params(probe),
                             train_s=time.perf_counter() - began))  # fmt: skip
            print(f"  {kind} distance {distance}: {accuracy:.1f}%", flush=True)
    return rows


@torch.no_grad()
def decode_tokens_per_second(model: TransformerSeq2Seq, length: int, batch: int, cache: bool) -> float:
    src = torch.randint(3, VOCAB, (batch, 32), generator=torch.Generator().manual_seed(0))

    def run() -> None:
        memory = model.encode(src)
        prefix = torch.full((batch, 1), BOS)
        state = model.new_cache() if cache else None
        for _ in range(length):  # a fixed length: EOS is never chosen, so both runs decode every position
            logits = model.decode(prefix[:, -1:], memory, state) if cache else model.decode(prefix, memory)
            logits[:, -1, EOS] = -math.inf
            prefix = torch.cat([prefix, logits[:, -1].argmax(-1, keepdim=True)], dim=1)

    return batch * length / median_seconds(run, warmup=1, repeats=3)


def caching(args) -> list[dict]:
    model = transformer(args.d_model, args.layers).eval()
    rows = []
    for length in args.decode_lengths:
        with_cache = decode_tokens_per_second(model, length, args.decode_batch, True)
        without = decode_tokens_per_second(model, length, args.decode_batch, False)
        rows.append(dict(length=length, cached_tok_s=with_cache, uncached_tok_s=without, speedup=with_cache / without))
        print(f"  {length} tokens: {with_cache:.0f} tok/s cached, {without:.0f} uncached", flush=True)
    return rows


def write(rows: list[dict], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def plot(results: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for name in ("Transformer", "GRU", "LSTM"):
        speed = [r for r in results["speed"] if r["model"] == name]
        axes[0].plot([r["length"] for r in speed], [r["epoch_s"] for r in speed], "o-", label=name)
        dist = [r for r in results["distance"] if r["model"] == name]
        axes[1].plot([r["distance"] for r in dist], [r["accuracy"] for r in dist], "o-", label=name)
    axes[0].set(xscale="log", yscale="log", xlabel="sequence length", ylabel="seconds per epoch", title="training time")
    axes[1].set(xscale="log", xlabel="distance d", ylabel="accuracy (%)", title="delayed copy")
    cache = results["cache"]
    axes[2].plot([r["length"] for r in cache], [r["cached_tok_s"] for r in cache], "o-", label="with cache")
    axes[2].plot([r["length"] for r in cache], [r["uncached_tok_s"] for r in cache], "o-", label="without")
    axes[2].set(xlabel="output tokens", ylabel="tokens / second", title="greedy decoding")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.savefig(path, dpi=110, bbox_inches="tight")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--claims", nargs="+", choices=("speed", "distance", "cache"), default=["speed", "distance", "cache"]
    )
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lengths", nargs="+", type=int, default=[16, 32, 64, 128, 256, 512])
    parser.add_argument("--epoch-tokens", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--distances", nargs="+", type=int, default=[1, 4, 16, 48])
    parser.add_argument("--copy-length", type=int, default=64)
    parser.add_argument("--copy-steps", type=int, default=150)
    parser.add_argument("--copy-lr", type=float, default=3e-3)
    parser.add_argument("--decode-lengths", nargs="+", type=int, default=[32, 128, 256])
    parser.add_argument("--decode-batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--quick", action="store_true", help="a seconds-long smoke test of every claim")
    parser.add_argument("--output", help="folder for the CSVs and the plot")
    args = parser.parse_args()
    if args.quick:
        args.d_model, args.layers, args.lengths, args.repeats = 16, 1, [16, 32], 1
        args.distances, args.copy_length, args.copy_steps, args.decode_lengths = [1, 4], 16, 5, [8, 16]
    torch.set_num_threads(args.threads)
    print(f"# torch {torch.__version__}, {platform.processor() or platform.machine()}, {args.threads} thread(s)")
    results: dict[str, list[dict]] = {}
    for claim, run in (("speed", parallelism), ("distance", path_length), ("cache", caching)):
        if claim in args.claims:
            print(f"\n## {claim}", flush=True)
            results[claim] = run(args)
            rows = results[claim]
            print_table(
                tuple(rows[0]), [tuple(f"{v:.4g}" if isinstance(v, float) else v for v in r.values()) for r in rows]
            )
    if args.output:
        out = Path(args.output)
        out.mkdir(parents=True, exist_ok=True)
        for claim, rows in results.items():
            write(rows, out / f"seq2seq-{claim}.csv")
        if len(results) == 3:
            plot(results, out / "seq2seq.png")
        print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
