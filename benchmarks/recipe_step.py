"""The training step of the Fashion-MNIST recipe's model, timed in two vitlab source trees, alternating.

Tells a slower machine from slower code: each round times `--steps` steps (batch 64, forward,
backward, fused AdamW, channels-last) in a fresh process per tree, the trees alternate and swap
order every other round, and the per-round milliseconds and their medians are printed.

    git worktree add /tmp/before <commit>
    python benchmarks/recipe_step.py /tmp/before/src src --rounds 6
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

STEP = r"""
import sys, time, torch, yaml
sys.path.insert(0, {src!r})
import vitlab
torch.set_num_threads({threads})
recipe = yaml.safe_load(open({recipe!r}))
torch.manual_seed(0)
model = vitlab.create_model(recipe["model"], num_classes=10, img_size=28, **recipe["model_args"])
model = model.to(memory_format=torch.channels_last)
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
x = torch.randn(64, 1, 28, 28).contiguous(memory_format=torch.channels_last)
y = torch.randint(0, 10, (64,))

def step():
    torch.nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)

for _ in range(10):
    step()
start = time.perf_counter()
for _ in range({steps}):
    step()
print((time.perf_counter() - start) / {steps} * 1000)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trees", nargs=2, help="two src/ directories of vitlab")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    recipe = str(Path(__file__).resolve().parents[1] / "recipes" / "fashion-mnist.yaml")
    times: dict[str, list[float]] = {tree: [] for tree in args.trees}
    for round_ in range(args.rounds):
        for tree in args.trees if round_ % 2 == 0 else reversed(args.trees):
            code = STEP.format(src=str(Path(tree).resolve()), threads=args.threads, recipe=recipe, steps=args.steps)
            done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
            times[tree].append(float(done.stdout.split()[-1]))
    for tree, values in times.items():
        rounded = json.dumps([round(v, 1) for v in values])
        print(f"{tree}: ms per step {rounded}, median {statistics.median(values):.1f}")


if __name__ == "__main__":
    main()
