"""Trains default-profile rows at a small batch through `hdit.train.train_command` (the command's own exit codes),
one after the other in one process: tests/test_distributed.py launches it under torchrun, so that one launch
(one start-up of every rank) trains several rows.

    python tests/distributed_driver.py --out DIR --configs E,R1 --batch 4 --steps 3 [--resume] [--grad-accum K]
           [--time-budget S] [--checkpoint-every K]
"""
import argparse
import os
import sys
from dataclasses import replace

import torch

from hdit.profiles import resolve
from hdit.train import train_command


def small(config_id: str, batch: int):
    run = resolve(config_id, "default")
    return replace(run, train=replace(run.train, batch_size=batch))


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--configs", default="E")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--time-budget", type=float, default=None)
    p.add_argument("--checkpoint-every", type=int, default=None)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    for config_id in a.configs.split(","):
        code = train_command(small(config_id, a.batch), f"{a.out}/{config_id}", "default", steps=a.steps,
                             resume=a.resume, device="cpu", checkpoint_every=a.checkpoint_every or a.steps,
                             log_every=1, progress=False, grad_accum=a.grad_accum, time_budget=a.time_budget)
        # each rank says how it ended before torchrun's agent, seeing a rank exit non-zero, tears the others down
        print(f"rank {os.environ.get('RANK', 0)}: {config_id} exit {code}", flush=True)
        if code:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
