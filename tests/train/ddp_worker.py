"""Run by torchrun in tests/train/test_distributed.py: a training run whose every process then writes its
own model and EMA weights, so the test can check that the processes agree."""

import sys

from safetensors.torch import save_file

from vitlab.cli import build_parser
from vitlab.train.config import FIELDS, make_config
from vitlab.train.distributed import init_distributed, shutdown
from vitlab.train.loop import fit
from vitlab.train.run import finish, prepare

if __name__ == "__main__":
    args = build_parser().parse_args(sys.argv[1:])
    config = make_config({name: getattr(args, name) for name in FIELDS if getattr(args, name, None) is not None})
    info = init_distributed(config.device)
    try:
        run = prepare(config, False, info)
        fit(run)
        finish(run)
        weights = {f"model.{k}": v for k, v in run.state.model.state_dict().items()}
        weights.update({f"ema.{k}": v for k, v in run.state.ema.module.state_dict().items()})
        save_file({k: v.contiguous() for k, v in weights.items()}, f"{config.output}/rank{info.rank}.safetensors")
    finally:
        shutdown(info)
