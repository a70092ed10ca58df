"""Does a training lever transfer? FER+ and taiwanese_dev numbers of exported expression runs (issue 11).

    python -m training.ablation_transfer base_e10 la10_e10 mix02_e10      # run folders under runs/transfer
    python -m training.ablation_transfer runs/noise/noise10_screened      # or any run folder
    python -m training.ablation_transfer base_e10 base_e10_s1 --ensemble   # + their output ensemble

Each run must be trained (``training.train_expression``) and exported (``python -m training.export_expression
RUN``: mirror averaging, temperature on FER+ Valid); its ONNX file is read on

* FER+ Valid / Test: the cached aligned crops (runs/cache), majority labels (faces without one left out);
* taiwanese_dev: crops made once by the service's own face stage (``noise_experiment.taiwanese_crops``,
  filters off; kept in OUT/taiwanese_crops.npz), against the observers' top vote and the intended label.
  Macro-F1 over the 7 classes the database has (a face read as contempt is simply wrong).

Readings of each run's probabilities p:

* plain run: ``raw``, p as the ONNX file gives it, is its FER+-prior reading (kind ``FER+``); ``raw ÷ π``, p
  divided by FER+ Train's class frequencies π (``fit_expression_prior.ferplus_prior``; the balanced column of
  ``noise_experiment``, exponent 1), its balanced reading (kind ``bal``).
* run trained with ``--logit-adjust TAU``: ``raw``, the logits as trained, is its natural, Menon-balanced
  reading (kind ``nat``, compared with the plain runs' ``bal``). ``+τ log π``: the training-time shift added
  back to the logits, softmax at a temperature T' fitted on FER+ Valid to those shifted logits (as the
  export does for a plain run): its FER+-prior reading (kind ``FER+``). ``+τ log π, ÷ π``: that reading
  divided by π, exactly the procedure that gives a plain run's ``bal`` (kind ``bal``).

The second table gives paired differences to the first run named, per reading kind, with the paired
standard error (same faces). taiwanese_dev is only read: nothing here is fitted to it (T' uses FER+ Valid).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from training.common import log, run_cli, softmax
from training.data import FERPLUS_CLASSES, RUNS_DIR, data_root
from training.evaluate_transfer import TW_CLASSES, macro_f1
from training.noise_experiment import run_onnx, score_onnx, taiwanese_crops

OUT = RUNS_DIR / "transfer"


def se(p: float, n: int) -> float:
    return float(np.sqrt(p * (1 - p) / n))


def paired_diff(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Mean and standard error of the per-face difference of two hit vectors over the same faces."""
    d = a.astype(float) - b.astype(float)
    return float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d)))


def readings(probs: dict[str, np.ndarray], prior: np.ndarray, tau: float, temperature: float,
             valid_y: np.ndarray) -> tuple[dict[str, dict[str, tuple[str, np.ndarray]]], float | None]:
    """split -> name -> (kind, scores), and T' (logit-adjusted runs): see the module docstring. ``probs`` are
    the ONNX probabilities per split (softmax of the logits / ``temperature``), ``valid_y`` FER+ Valid's labels."""
    if not tau:
        return {s: {"raw": ("FER+", p), "raw ÷ π": ("bal", p / prior)} for s, p in probs.items()}, None
    from training.export_expression import fit_temperature

    shifted = {s: temperature * np.log(np.maximum(p, 1e-30)) + tau * np.log(prior) for s, p in probs.items()}
    t_fer = fit_temperature(shifted["valid"], valid_y)
    out = {}
    for s, p in probs.items():
        fer = softmax(shifted[s] / t_fer)
        out[s] = {"raw": ("nat", p), "+τ log π": ("FER+", fer), "+τ log π, ÷ π": ("bal", fer / prior)}
    return out, t_fer


def load_taiwanese(out: Path) -> dict[str, np.ndarray] | None:
    cache = out / "taiwanese_crops.npz"
    if not cache.is_file():
        root = data_root() / "taiwanese_dev"
        if not (root / "labels.csv").is_file():
            return None
        log.info("making taiwanese_dev crops with the service's face stage (once)")
        crops, top, intended = taiwanese_crops(root, intended=True)
        out.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(cache, crops=crops, top=top, intended=intended)
    with np.load(cache) as z:
        return {k: z[k] for k in ("crops", "top", "intended")}


def run_dir(name: str, out: Path) -> Path:
    path = Path(name)
    return path if (path / "export.json").is_file() else out / name


def evaluate(runs: list[Path], ferplus: dict[str, dict[str, np.ndarray]], tw: dict[str, np.ndarray] | None,
             prior: np.ndarray, ensemble: bool = False) -> list[dict]:
    """One row per (run, reading), with the hit vectors kept for the paired differences; with ``ensemble``
    also the output ensemble of the plain runs (geometric mean of their probabilities)."""
    rows, plain = [], []
    for run in runs:
        info = json.loads((run / "export.json").read_text())
        tau = float(info["args"].get("logit_adjust", 0.0) or 0.0)
        onnx = run / "expression.onnx"
        probs = {s: run_onnx(onnx, ferplus[s]["x"]) for s in ferplus}
        if tw is not None:
            probs["tw"] = score_onnx(onnx, tw["crops"])
        rows += reading_rows(run.name, probs, info, tau, ferplus, tw, prior)
        if not tau:
            plain.append(probs)
    if ensemble and len(plain) > 1:  # geometric mean of the plain runs' probabilities, renormalised
        probs = {s: softmax(np.mean([np.log(np.maximum(p[s], 1e-30)) for p in plain], axis=0)) for s in plain[0]}
        info = {"args": {}, "epoch": None, "temperature": 1.0}
        rows += reading_rows(f"ensemble of {len(plain)}", probs, info, 0.0, ferplus, tw, prior)
    return rows


def reading_rows(run: str, probs: dict[str, np.ndarray], info: dict, tau: float, ferplus: dict,
                 tw: dict[str, np.ndarray] | None, prior: np.ndarray) -> list[dict]:
    """The rows of one run's (or ensemble's) readings."""
    rows = []
    for_split, t_fer = readings(probs, prior, tau, info["temperature"], ferplus["valid"]["y"])
    for name in for_split["valid"]:
        kind = for_split["valid"][name][0]
        pred = {s: r[name][1].argmax(1) for s, r in for_split.items()}
        hits = {s: pred[s] == ferplus[s]["y"] for s in ferplus}
        yt = ferplus["test"]["y"]
        row = {"run": run, "tau": tau, "mixup": info["args"].get("mixup", 0.0), "epoch": info["epoch"],
               "temperature": info["temperature"], "t_fer": t_fer, "reading": name, "kind": kind,
               "valid": float(hits["valid"].mean()), "test": float(hits["test"].mean()),
               "test_recall": float(np.mean([hits["test"][yt == c].mean() for c in np.unique(yt)]))}
        if tw is not None:
            hits["tw_top"], hits["tw_intended"] = pred["tw"] == tw["top"], pred["tw"] == tw["intended"]
            row.update(tw_top=float(hits["tw_top"].mean()), tw_intended=float(hits["tw_intended"].mean()),
                       tw_f1=macro_f1(tw["top"], pred["tw"], [FERPLUS_CLASSES.index(c) for c in TW_CLASSES]),
                       tw_neutral=float((pred["tw"] == 0).mean()),
                       tw_answers=np.bincount(pred["tw"], minlength=len(FERPLUS_CLASSES)).tolist())
        row["_hits"] = hits
        rows.append(row)
    return rows


def print_tables(rows: list[dict], n: dict) -> None:
    tw = "tw_top" in rows[0]
    tw_head = f" taiwanese_dev top vote: acc / macro-F1 (n={n.get('tw')}) | vs intended | read as neutral |"
    print(f"| run | reading | FER+ Valid (n={n['valid']}) | FER+ Test (n={n['test']}) | FER+ Test mean class recall |"
          + (tw_head if tw else ""))
    print("|---|---|---|---|---|" + ("---|---|---|" if tw else ""))
    for r in rows:
        mark = {"FER+": " (FER+ prior)", "bal": " (balanced)", "nat": " (natural, balanced)"}[r["kind"]]
        if r["t_fer"]:
            mark += f" T'={r['t_fer']:.3f}" if r["kind"] == "FER+" else ""
        line = (f"| {r['run']} | {r['reading']}{mark} | {r['valid']:.4f} | {r['test']:.4f} | {r['test_recall']:.3f} |")
        if tw:
            line += f" {r['tw_top']:.3f} / {r['tw_f1']:.3f} | {r['tw_intended']:.3f} | {r['tw_neutral']:.3f} |"
        print(line)
    s = {k: se(0.8, n[k]) for k in ("valid", "test")}
    note = f"standard error of one accuracy: FER+ Valid/Test ≈ {s['valid']:.4f} at 0.80"
    if tw:
        note += f"; taiwanese_dev ≈ {se(0.55, n['tw']):.3f} at 0.55"
    print(f"\n({note})\n")
    if tw:
        print("taiwanese_dev answers per class (" + ", ".join(FERPLUS_CLASSES) + "); top vote: "
              + " ".join(str(c) for c in n["tw_top"]) + "\n")
        print("| run | reading | answers |\n|---|---|---|")
        for r in rows:
            print(f"| {r['run']} | {r['reading']} | {' '.join(str(c) for c in r['tw_answers'])} |")
        print()
    base = rows[0]["run"]
    others = [r for r in rows if r["run"] != base]
    if not others:
        return
    splits = ["test"] + (["tw_top", "tw_intended"] if tw else [])
    print(f"Paired differences to {base} (same reading kind, same faces), ± standard error:\n")
    print("| run | reading | " + " | ".join({"test": "Δ FER+ Test", "tw_top": "Δ taiwanese_dev top vote",
                                                "tw_intended": "Δ vs intended"}[s] for s in splits) + " |")
    print("|---|---|" + "---|" * len(splits))
    ref = {r["kind"]: r["_hits"] for r in rows if r["run"] == base}
    ref.setdefault("nat", ref.get("bal"))  # a logit-adjusted run's natural reading against the plain 'bal'
    if set(ref) - {"FER+", "bal", "nat"}:
        raise ValueError("the reference run must be a plain run")
    for r in others:
        cells = []
        for s in splits:
            m, e = paired_diff(r["_hits"][s], ref[r["kind"]][s])
            cells.append(f"{m:+.4f} ± {e:.4f}")
        print(f"| {r['run']} | {r['reading']} ({r['kind']}) | " + " | ".join(cells) + " |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run folders, or names under --out (the first is the reference)")
    parser.add_argument("--out", type=Path, default=OUT, help="where run names are looked up, crops and table kept")
    parser.add_argument("--cache", type=Path, default=RUNS_DIR / "cache", help="FER+ aligned-crop cache")
    parser.add_argument("--no-taiwanese", action="store_true", help="FER+ only")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--ensemble", action="store_true",
                        help="also read the output ensemble of the plain runs (geometric mean of probabilities)")
    args = parser.parse_args(argv)
    from training.expression_data import load_split
    from training.fit_expression_prior import ferplus_prior

    runs = [run_dir(r, args.out) for r in args.runs]
    missing = [str(r) for r in runs if not (r / "export.json").is_file()]
    if missing:
        raise SystemExit(f"not exported: {missing}; run `python -m training.export_expression RUN` first")
    ferplus = {s: load_split(s, args.cache) for s in ("valid", "test")}
    tw = None if args.no_taiwanese else load_taiwanese(args.out)
    rows = evaluate(runs, ferplus, tw, ferplus_prior(), args.ensemble)
    n = {s: len(ferplus[s]["y"]) for s in ferplus}
    if tw is not None:
        n.update(tw=len(tw["top"]), tw_top=np.bincount(tw["top"], minlength=len(FERPLUS_CLASSES)).tolist())
    print_tables(rows, n)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps([{k: v for k, v in r.items() if k != "_hits"} for r in rows], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
