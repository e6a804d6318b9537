"""The issue-25 study: self-training rounds against the real-label model, over seeds.

Every run is scripts/experiment.py on the bundled image's halves with the shipped conditional
DDPM; a seed N sets the simulated sketches, the synthesis and both Cellpose trainings
(simulate / synthesize / segment seed N), so the real-label model of seed N has the same
Cellpose seed as the synthetic one. Rows share what they have in common: every row's round 1
and real-label model are the first row's of that seed (the pipeline's stamps skip them), so a
row costs only its round 2. The real+rounds row is the fair upper baseline: the real-label
model's own round 2 on the same unlabelled images (experiment.py --real-rounds).

    python scripts/rounds_study.py                        # every row x seeds 0,1,2 (hours)
    python scripts/rounds_study.py --rows rounds --seeds 0
    python scripts/rounds_study.py --rows real+rounds     # the fair upper baseline
    python scripts/rounds_study.py --table-only           # the table from finished runs
    python scripts/rounds_study.py --budget smoke --seeds 0   # a plumbing check

Runs go to experiment_rounds/<row>-s<seed>/ (report.md, results.json), the table to
experiment_rounds/report.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from study import METRICS, machines_line, spread

REPO = Path(__file__).resolve().parent.parent
OUT = Path(os.environ.get("ROUNDS_STUDY_OUT", REPO / "experiment_rounds"))
BASE = {"train.model": "bundled:dsb2018-nuclei-conditional", "rounds.n": "2"}
# the first row is the one every other row starts from (its round 1 and real-label model)
ROWS: dict[str, dict[str, str]] = {
    "rounds": {},
    "rounds+generator": {"rounds.generator_steps": "1000"},
    "rounds+mirror-ignored": {"rounds.mirror_only": "ignored"},
    "real+rounds": {},
}
# rows that are an arm of experiment.py rather than a recipe: they reuse the first row's
# pipeline as it is (its rounds too) and add the arm
ARMS = {"real+rounds": ("--real-rounds", "real_rounds")}
LABELS = {
    "rounds": "+ round 2 segmenter (synthetic + confident crops)",
    "rounds+generator": "+ round 2 generator (DDPM fine-tuned 1000 steps on round-1 masks)",
    "rounds+mirror-ignored": "+ round 2, regions only the mirror finds ignored",
    "real+rounds": "real labels + self-training round 2 (the fair upper baseline)",
}


def run_dir(row: str, seed: int) -> Path:
    return OUT / f"{row}-s{seed}"


def run(row: str, seed: int, budget: str | None) -> None:
    out, first = run_dir(row, seed), run_dir(next(iter(ROWS)), seed)
    if (out / "results.json").exists():
        print(f"== {out.name}: done earlier")
        return
    args = [f"--set={k}={v}" for k, v in {**BASE, **ROWS[row]}.items()]
    args += [f"--set={stage}.seed={seed}" for stage in ("simulate", "synthesize", "segment")]
    args += [f"--budget={budget}"] if budget else []
    if budget == "smoke" and "rounds.generator_steps" in ROWS[row]:
        args.append("--set=rounds.generator_steps=2")  # a plumbing check: a later --set wins
    if out != first:
        if not (first / "results.json").exists():
            print(f"== {out.name}: needs {first.name} first")
            return
        if not out.exists():  # round 1 and the real-label model as they are: only round 2 runs
            # not its results either: a row that fails must not look done with them
            redone = [ARMS[row][1]] if row in ARMS else ["rounds*"]
            skip = shutil.ignore_patterns(*redone, "results.json", "report.*")
            shutil.copytree(first, out, symlinks=True, ignore=skip)
        args.append("--reuse-real")
        args += [ARMS[row][0]] if row in ARMS else []
    print(f"== {out.name}", flush=True)
    with open(OUT / f"{out.name}.log", "w") as log:
        command = [sys.executable, str(REPO / "scripts" / "experiment.py"), "--out", str(out)]
        done = subprocess.run([*command, *args], stdout=log, stderr=log)
    if done.returncode != 0:
        print(f"   failed (exit {done.returncode}); see {OUT / (out.name + '.log')}")


def results_of(row: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(OUT.glob(f"{row}-s*/results.json"))]


def table() -> str:
    """Mean (min-max) over seeds of every row, and as a share of the real-label model."""
    lines = ["| Cellpose trained on | seeds | " + " | ".join(METRICS) + " |"]
    lines.append("|---|---|" + "---|" * len(METRICS))
    first = results_of(next(iter(ROWS)))
    if not first:
        return "no finished runs"
    real = {m: [r["scores"]["real"][m]["mean"] for r in first] for m in METRICS}
    arms = [(next(iter(ROWS)), "synthetic only (round 1)", first, "1")]
    arms += [(row, LABELS[row], results_of(row), "2") for row in ROWS]
    ratios = []
    for row, label, results, round_number in arms:
        if results:
            scores = {m: [_arm_score(r, row, round_number, m) for r in results] for m in METRICS}
            lines.append(_row(label, results, scores))
            ratios.append((label, {m: _share(scores[m], real[m]) for m in METRICS}))
    lines.append(_row("real labels", first, real))
    lines += ["", "| share of the real-label model (means) | " + " | ".join(METRICS) + " |"]
    lines.append("|---|" + "---|" * len(METRICS))
    for label, shares in ratios:
        lines.append(f"| {label} | " + " | ".join(shares[m] for m in METRICS) + " |")
    return "\n".join(lines)


def _arm_score(results: dict, row: str, round_number: str, metric: str) -> float:
    if row in ARMS:
        return results["scores"][ARMS[row][1]][metric]["mean"]
    return results["rounds"]["scores"][round_number][metric]["mean"]


def _row(label: str, results: list[dict], scores: dict[str, list[float]]) -> str:
    seeds = ",".join(str(r["recipe"]["segment"]["seed"]) for r in results)
    return f"| {label} | {seeds} | " + " | ".join(spread(scores[m]) for m in METRICS) + " |"


def _share(values: list[float], real: list[float]) -> str:
    return f"{np.mean(values) / np.mean(real):.3f}" if np.mean(real) > 0 else "–"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", default=",".join(ROWS), help="comma-separated: " + ",".join(ROWS))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--table-only", action="store_true")
    parser.add_argument("--budget", default=None, help="the recipe's budget (default: full)")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    rows = args.rows.split(",")
    unknown = set(rows) - set(ROWS)
    if unknown:
        parser.error(f"unknown rows {sorted(unknown)}; choose from {', '.join(ROWS)}")
    if not args.table_only:
        for seed in (int(s) for s in args.seeds.split(",")):
            for row in rows:
                run(row, seed, args.budget)
    every_run = [json.loads(p.read_text()) for p in sorted(OUT.glob("*-s*/results.json"))]
    text = "# Self-training rounds (issue 25)\n\n" + machines_line(every_run) + "\n\n"
    text += table() + "\n"
    (OUT / "report.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
