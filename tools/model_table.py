"""Print the README's model table: every registered variant with params, GMACs and parity coverage.

Parity coverage lists the reference layouts that the fixtures in tests/parity/fixtures check for
the variant's architecture (the fixtures use small configurations of the same class).

    python tools/model_table.py > /tmp/models.md
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from safetensors import safe_open

import vitlab
from vitlab.registry import get_entry

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "parity" / "fixtures"


def fixture_layouts() -> dict[type, set[str]]:
    layouts: dict[type, set[str]] = defaultdict(set)
    for path in sorted(FIXTURES.glob("*.safetensors")):
        with safe_open(path, "pt") as f:
            meta = f.metadata()
        entry = get_entry(meta["model"])
        reference = meta["reference"].split(" (")[0] + (" reader" if meta["layout"] == "jax" else "")
        layouts[entry.builder].add(f"{meta['layout']}: {reference}" if meta["layout"] != "native" else reference)
    return layouts


def main() -> None:
    layouts = fixture_layouts()
    print("| model | params | GMACs | input | reference | parity fixtures against |")
    print("|---|---|---|---|---|---|")
    for name in vitlab.list_models():
        info = vitlab.model_info(name)
        entry = get_entry(name)
        size = "x".join(str(s) for s in info["input_size"][1:])
        checked = "; ".join(sorted(layouts.get(entry.builder, ()))) or "none"
        print(
            f"| {name} | {info['params'] / 1e6:.2f}M | {info['gmacs']:.2f} | {size} | {info['reference']} | {checked} |"
        )


if __name__ == "__main__":
    main()
