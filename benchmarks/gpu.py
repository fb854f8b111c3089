"""ViT-B/16 and Swin-T, vitlab against timm, both under torch.compile, in bf16 on a GPU (fp32 on a CPU).

For each model and mode (inference, a training step) the two libraries run the same weights in
alternating rounds (`vitlab.bench.benchmark`, `--against timm`); then this script reports

- which scaled-dot-product kernel vitlab's attention ran (read from the profiler's operator names:
  flash, memory-efficient, cuDNN or the unfused math path), so "flash attention is in use" is a
  measured statement, not an assumption;
- the model FLOPs utilisation (MFU): 2 x the counted multiply-accumulates per image (3x that for a
  training step: forward, and the two products of the backward) times the images per second,
  divided by the device's peak. The peak is looked up for the GPUs listed in PEAK_TFLOPS (dense
  bf16 tensor-core figures from the vendors' data sheets) or given with --peak-tflops; without
  either (a CPU), the achieved TFLOP/s are printed and the MFU is left out.

On a machine without a GPU the same script runs on the CPU, in fp32 by default (bf16 autocast is
slow on CPUs without native bf16), so it can be tried anywhere:

    python benchmarks/gpu.py                       # on a GPU: bf16, compiled, batch 64
    python benchmarks/gpu.py --batch-size 4 --rounds 3 --no-compile   # a quick CPU run
"""

from __future__ import annotations

import argparse

import torch

import vitlab
from vitlab.bench import BenchConfig, benchmark, build_sides, report, resolve_device

MODELS = ["vit_base_patch16_224", "swin_tiny_patch4_window7_224"]
# Dense bf16 tensor-core peak, TFLOP/s (SXM parts), matched against torch.cuda.get_device_name.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 70.0, "L4": 121.0}
SDPA_KERNELS = {
    "flash": "_scaled_dot_product_flash_attention",
    "memory-efficient": "_scaled_dot_product_efficient_attention",
    "cudnn": "_scaled_dot_product_cudnn_attention",
    "math (unfused)": "_scaled_dot_product_attention_math",
}


def attention_kernels(config: BenchConfig) -> dict[str, int]:
    """How many times each SDPA kernel ran in one forward of vitlab's model (profiler operator names)."""
    device = resolve_device(config.device)
    _, model = build_sides(BenchConfig(config.model, device=config.device), device)[0]
    size = model.img_size if isinstance(model.img_size, tuple) else (224, 224)
    batch = torch.randn(2, model.in_chans, *size, device=device)
    amp = torch.autocast(device.type, torch.bfloat16, enabled=config.precision == "bf16")
    with torch.profiler.profile() as prof, torch.inference_mode(), amp:
        model.eval()(batch)
    counts: dict[str, int] = {}
    for event in prof.key_averages():
        for kind, name in SDPA_KERNELS.items():
            if event.key.startswith(f"aten::{name}") and not event.key.endswith("backward"):
                counts[kind] = counts.get(kind, 0) + event.count
    return counts


def peak_flops(device: torch.device, given: float | None) -> float | None:
    if given is not None:
        return given * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((tflops * 1e12 for key, tflops in PEAK_TFLOPS.items() if key in name), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--batch-size", type=int, help="default: 64 on a GPU, 8 on a CPU")
    parser.add_argument("--precision", choices=("fp32", "bf16", "auto"), help="default: bf16 on a GPU, fp32 on a CPU")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--no-compile", action="store_true", help="eager on both sides")
    parser.add_argument("--peak-tflops", type=float, help="the device's peak, for the MFU (looked up for known GPUs)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    gpu = device.type == "cuda"
    precision = args.precision or ("bf16" if gpu else "fp32")
    peak = peak_flops(device, args.peak_tflops)
    summary = []
    for name in args.models:
        macs = vitlab.model_info(name)["gmacs"] * 1e9
        for mode in ("infer", "train"):
            config = BenchConfig(
                name, batch_size=args.batch_size or (64 if gpu else 8), mode=mode, precision=precision,
                compile=not args.no_compile, against="timm", rounds=args.rounds, device=args.device,
            )  # fmt: skip
            results = benchmark(config)
            print(report(config, results), flush=True)
            flops = 2 * macs * (3 if mode == "train" else 1) * results[0].throughput
            mfu = f", MFU {flops / peak:.1%}" if peak else ""
            summary.append(f"{name} {mode}: vitlab {flops / 1e12:.2f} TFLOP/s{mfu}")
        kernels = attention_kernels(BenchConfig(name, precision=precision, device=args.device))
        found = ", ".join(f"{kind} x{count}" for kind, count in kernels.items()) or "no SDPA kernel (manual products)"
        summary.append(f"{name} attention kernels in one forward ({precision}): {found}")
    print("\n".join(summary))


if __name__ == "__main__":
    main()
