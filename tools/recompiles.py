"""How many graphs torch.compile makes for one model over several input sizes (dynamo's count, eager backend).

    python tools/recompiles.py [NAME ...] [--timeout S]

One name per family and code path by default (the export walk's representatives, image models), each
on its `tiny=` configuration in its own process, with `fullgraph=True` and dynamo's counting backend
(tracing only: no code generation), over 64x64, 80x96, 128x72 and 96x160 (batch 2): the first size
compiles a static graph, the second one with symbolic sides, and a bounded model reuses it for the
last two. Prints the graphs and the seconds each size took, and whether the outputs equal eager's.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

SIZES = [(64, 64), (80, 96), (128, 72), (96, 160)]  # no stage map of side 1 at stride 32 (torch specialises 1)


def measure(name: str) -> dict:
    """Compile `name`'s tiny configuration and run it at every size of SIZES: graphs and seconds after each."""
    import torch
    import torch._dynamo
    from torch._dynamo.testing import CompileCounter

    import vitlab
    from vitlab.registry import get_entry

    torch.manual_seed(0)
    entry = get_entry(name)
    classes = {"num_classes": 3} if entry.task == "image-classification" else {}
    model = vitlab.create_model(name, **{**entry.tiny, **classes}).eval()
    counter = CompileCounter()
    compiled = torch.compile(model, fullgraph=True, backend=counter)
    rows = []
    for size in SIZES:
        x = torch.randn(2, model.in_chans, *size, generator=torch.Generator().manual_seed(size[0]))
        start = time.perf_counter()
        with torch.no_grad():
            actual, expected = compiled(x), model(x)
        actual = actual.logits if hasattr(actual, "logits") else actual
        expected = expected.logits if hasattr(expected, "logits") else expected
        same = bool(torch.allclose(actual, expected, rtol=1e-5, atol=1e-6))
        rows.append({"size": size, "graphs": counter.frame_count, "seconds": time.perf_counter() - start, "same": same})
    return {"name": name, "rows": rows}


def representatives() -> list[str]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, from any directory
    from tests.export.test_export import NAMES

    import vitlab.registry

    return [n for n in NAMES if vitlab.registry.get_entry(n).task != "sequence-to-sequence"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds allowed per model")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # the child process: measure one model, print JSON
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one)))
        return
    print(f"| model | graphs after {', '.join(f'{h}x{w}' for h, w in SIZES)} | seconds per size | equal to eager |")
    print("|---|---|---|---|")
    for name in args.names or representatives():
        command = [sys.executable, __file__, "--one", name]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout, check=True)
        except subprocess.TimeoutExpired:
            print(f"| {name} | not finished in {args.timeout:.0f} s | | |", flush=True)
            continue
        except subprocess.CalledProcessError as err:
            print(f"| {name} | failed: {err.stderr.strip().splitlines()[-1]} | | |", flush=True)
            continue
        rows = json.loads(done.stdout.strip().splitlines()[-1])["rows"]
        graphs = ", ".join(str(r["graphs"]) for r in rows)
        seconds = ", ".join(f"{r['seconds']:.1f}" for r in rows)
        print(f"| {name} | {graphs} | {seconds} | {'yes' if all(r['same'] for r in rows) else 'NO'} |", flush=True)


if __name__ == "__main__":
    main()
