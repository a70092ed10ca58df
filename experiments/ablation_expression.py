"""FER+ Valid / Test accuracy of trained expression runs, one view and mirror-averaged (the ablation table).

    python -m experiments.ablation_expression ce_e24 triplet_e24 screened_e24 screened_w32_e40

Reads runs/expression/RUN/best.pt (the checkpoint each run selected on Valid) and the FER+ cache.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from training.common import run_cli
from training.data import CACHE_DIR, RUNS_DIR
from training.expression.data import load_split
from training.expression.model import infer, load_net
from training.metrics import accuracy


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run names under runs/expression/, or run folders")
    p.add_argument("--cache", type=Path, default=CACHE_DIR)
    p.add_argument("--limit", type=int, default=0, help="first N faces of each split (0 = all)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = {split: load_split(split, args.cache, args.limit) for split in ("valid", "test")}
    print("| run | epoch | one view Valid / Test | mirror Valid / Test |\n|---|---|---|---|")
    for run in args.runs:
        run_dir = Path(run) if Path(run).is_dir() else RUNS_DIR / "expression" / run
        net, ckpt = load_net(run_dir)
        acc = {(split, flip): accuracy(data[split]["y"], infer(net, data[split]["x"], flip=flip)[0].argmax(1))
               for split in ("valid", "test") for flip in (False, True)}
        print(f"| {run_dir.name} | {ckpt['epoch']} | {acc['valid', False]:.4f} / {acc['test', False]:.4f} "
              f"| {acc['valid', True]:.4f} / {acc['test', True]:.4f} |", flush=True)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
