"""The issue-12 study: `make experiment` variants, each over several DDPM seeds, in one table.

Every row is scripts/experiment.py with the same held-back half, Cellpose recipe and step
budget; only the synthetic side changes. Rows that differ only after the DDPM share it
(paper, +QC filtering and 64 images share the unconditional model of each
seed; conditional and conditional + guidance share the conditional one), and every run
shares the real-label Cellpose of the first run (it does not depend on the synthetic side).

    python scripts/study.py                    # all rows x seeds 0,1,2 (hours on a CPU)
    python scripts/study.py --rows paper,conditional --seeds 0
    python scripts/study.py --table-only       # just (re)write the table from finished runs
    python scripts/study.py --budget smoke --rows paper --seeds 0   # a plumbing check

Runs go to experiment_study/<row>-s<seed>/ (report.md, results.json each); the table to
experiment_study/report.md. A run whose results.json exists is not run again.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
STUDY = Path(os.environ.get("STUDY_OUT", REPO / "experiment_study"))
# The paper's method with every knob spelled out as recipe keys (`cellsynth pipeline
# --show-recipe`), so a row stays what it was when the recipe's defaults change; a row is this
# plus its changes. t_start is fixed at 600, what the label-based KLD rule chose for every row
# of the study on this image (the pipeline's own rule needs no labels). "ddpm" names the row
# whose model it reuses.
PAPER = {
    "train.condition": "none",
    "t_start.rule": "fixed",
    "t_start.value": "600",
    "clean.max_phantom": "1",
    "clean.max_vanished": "1",
    "simulate.n": "16",
    "segment.images_per_epoch": "16",
    "synthesize.guidance": "1",
    "segment.seed": "0",
    "simulate.touching_fraction": "0",
    "fit.spread": "central",
    "segment.background_crops": "0",
}
# the best row (pseudo-sketch conditioned, w = 2), which the last rows change one knob of
GUIDED = {**PAPER, "train.condition": "pseudo-sketch", "synthesize.guidance": "2"}
TOUCHING = {**GUIDED, "simulate.touching_fraction": "0.25", "ddpm": "conditional+guidance"}
# the best row (and the recipe's defaults): touching nuclei + real background squares
BEST = {**TOUCHING, "segment.background_crops": "4"}
ROWS: dict[str, dict[str, str]] = {
    "paper": PAPER,
    # the same synthetic images, another Cellpose seed: the noise floor of a comparison
    "paper-cellpose-s1": {**PAPER, "segment.seed": "1", "ddpm": "paper"},
    # (the QC-aware t_start row, qc-t, used `noise-analysis --qc`; its figures stay in
    # docs/study_2d.md, the pipeline has no such rule)
    "qc-filter": {
        **PAPER,
        "clean.max_phantom": "0.2",
        "clean.max_vanished": "0.2",
        "ddpm": "paper",
    },
    "synthetic-64": {**PAPER, "simulate.n": "64", "ddpm": "paper"},
    "qc-filter+64": {
        **PAPER,
        "clean.max_phantom": "0.2",
        "clean.max_vanished": "0.2",
        "simulate.n": "64",
        "ddpm": "paper",
    },
    "conditional": {**PAPER, "train.condition": "pseudo-sketch"},
    "conditional-t1000": {
        **PAPER,
        "train.condition": "pseudo-sketch",
        "t_start.value": "1000",
        "ddpm": "conditional",
    },
    "conditional+guidance": {**GUIDED, "ddpm": "conditional"},
    # real nuclei touch (a quarter of them lie within 2 px of another); the fitted preset's
    # random placement gives fewer pairs, and the synthetic-trained Cellpose merges pairs
    "conditional+guidance+touching": TOUCHING,
    # the same synthetic images, another Cellpose seed: are the background fragments of
    # touching-s0 Cellpose's own noise?
    "conditional+guidance+touching-cellpose-s1": {**TOUCHING, "segment.seed": "1"},
    # the held-back half's AP@0.75 losses are mostly small bright nuclei drawn too large: the
    # central ranges of the fitted preset (20-80 % sizes) never simulate any
    "conditional+guidance+wide": {**GUIDED, "fit.spread": "wide", "ddpm": "conditional+guidance"},
    # background fragments decide AP@0.5 (touching-s0: 21, best row seed 2: 17): the
    # synthetic-trained Cellpose has never seen real background; give it nucleus-free real
    # squares of the unlabelled training image (no labels)
    "conditional+guidance+background": {
        **GUIDED,
        "segment.background_crops": "4",
        "ddpm": "conditional+guidance",
    },
    "conditional+guidance+touching+background": BEST,
    # a conditional model needs no noisy sketch to start from: pure noise (t_start = T) is
    # also the pipeline's label-free rule for conditional models (`t_start.rule = "auto"`)
    "conditional+guidance+touching+background-t1000": {**BEST, "t_start.value": "1000"},
}
LABELS = {
    "paper": "paper method (unconditional, KLD t_start)",
    "paper-cellpose-s1": "paper method, Cellpose seed 1 (same images)",
    "qc-filter": "+ QC filtering (classical judge, drop images > 20 %)",
    "synthetic-64": "+ 64 synthetic images (same Cellpose steps)",
    "qc-filter+64": "+ QC filtering of 64 synthetic images",
    "conditional": "conditional model (pseudo-sketches)",
    "conditional-t1000": "conditional, from pure noise (t_start = T)",
    "conditional+guidance": "conditional + guidance w = 2",
    "conditional+guidance+touching": "conditional + guidance + 25 % touching nuclei",
    "conditional+guidance+touching-cellpose-s1": "the same, Cellpose seed 1 (same images)",
    "conditional+guidance+wide": "conditional + guidance + wide fitted ranges (2-98 %)",
    "conditional+guidance+background": "conditional + guidance + real background squares",
    "conditional+guidance+touching+background": "+ touching + real background squares",
    "conditional+guidance+touching+background-t1000": (
        "the same, from pure noise (t_start = T: the pipeline's defaults)"
    ),
}
METRICS = ("dice", "ap@0.5", "ap@0.75", "f1")


def run_dir(row: str, seed: int) -> Path:
    return STUDY / f"{row}-s{seed}"


def share(source: Path, target: Path) -> None:
    """Give a run a finished part of another run (a relative link: no copy)."""
    if source.exists() and not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(os.path.relpath(source, target.parent))


def finished_real_arm() -> Path | None:
    """The real-label Cellpose of an earlier run (all runs share one), if there is one."""
    found = sorted(STUDY.glob("*-s*/seg_real/segmenter.json"))
    return found[0].parent if found else None


def run(row: str, seed: int, first_real: Path | None, budget: str | None) -> None:
    out = run_dir(row, seed)
    if (out / "results.json").exists():
        print(f"== {out.name}: done earlier")
        return
    settings = dict(ROWS[row])
    # the row's seed is the DDPM's and the synthesis's (the simulated sketches stay seed 0)
    settings.update({"train.seed": str(seed), "synthesize.seed": str(seed)})
    shared_ddpm = settings.pop("ddpm", None)
    if shared_ddpm is not None:
        settings["train.model"] = str(run_dir(shared_ddpm, seed) / "pipeline" / "runs" / "ddpm")
    args = [f"--set={key}={value}" for key, value in settings.items()]
    args += [f"--budget={budget}"] if budget else []
    if first_real is not None:
        share(first_real, out / "seg_real")
        args.append("--reuse-real")
    print(f"== {out.name}: {settings}", flush=True)
    with open(STUDY / f"{out.name}.log", "w") as log:
        done = subprocess.run(
            [sys.executable, str(REPO / "scripts" / "experiment.py"), "--out", str(out), *args],
            stdout=log,
            stderr=log,
        )
    if done.returncode != 0:
        print(f"   failed (exit {done.returncode}); see {STUDY / (out.name + '.log')}")


def spread(values: list[float], fmt: str = "{:.3f}") -> str:
    """mean, and min-max over seeds when there is more than one."""
    text = fmt.format(np.mean(values))
    if len(values) > 1:
        text += f" ({fmt.format(min(values))}–{fmt.format(max(values))})"
    return text


def machines_line(results: list[dict]) -> str:
    """Which machines the runs of a table were made on: rows compare alike only on one CPU
    kernel set and thread count (docs/reproducibility.md). Runs from before experiment.py
    recorded it count as unknown."""
    made_on = sorted(
        {
            f"{m['cpu_kernels']} CPU kernels, {m['threads']} threads, torch {m['torch']}"
            if (m := r.get("machine"))
            else "unrecorded"
            for r in results
        }
    )
    if len(made_on) == 1:
        return f"Every run made on: {made_on[0]}."
    return f"Runs made on {len(made_on)} machine kinds ({'; '.join(made_on)}): compare with care."


def compute_minutes(results: dict) -> float:
    """Minutes of the synthetic arm: every stage but the real-label Cellpose; a reused DDPM
    counts with its own training time (from its loss log), as if the row had trained it."""
    seconds = {k: v for k, v in results["seconds"].items() if "real labels" not in k}
    model = results["recipe"]["train"]["model"]
    if model:
        rows = (Path(model) / "loss.csv").read_text().split()
        seconds["train"] = float(rows[-1].split(",")[3]) if len(rows) > 1 else 0.0
    return sum(seconds.values()) / 60


def table() -> str:
    lines = [
        "| row | seeds | t_start | Dice | AP@0.5 | AP@0.75 | F1 | phantom | vanished | "
        "min of compute |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    real = []
    for row in ROWS:
        results = [json.loads(p.read_text()) for p in sorted(STUDY.glob(f"{row}-s*/results.json"))]
        if not results:
            continue
        real += [r["scores"]["real"] for r in results]
        cells = [spread([r["scores"]["synthetic"][m]["mean"] for r in results]) for m in METRICS]
        qc = [
            spread([r["qc"][k] * 100 for r in results], "{:.0f} %") for k in ("phantom", "vanished")
        ]
        minutes = [compute_minutes(r) for r in results]
        seeds = ",".join(str(r["recipe"]["train"]["seed"]) for r in results)
        t_starts = ",".join(str(r["t_start"]) for r in results)
        lines.append(
            f"| {LABELS[row]} | {seeds} | {t_starts} | {' | '.join(cells)} | "
            f"{' | '.join(qc)} | {spread(minutes, '{:.0f}')} |"
        )
    if real:
        cells = [f"{real[0][m]['mean']:.3f}" for m in METRICS]
        lines.append(
            f"| real labels (one model, shared) | – | – | {' | '.join(cells)} | – | – | – |"
        )
        lines += ["", ratio_table(real[0])]
    return "\n".join(lines)


# issue 12's target: synthetic only >= these shares of the real-label model
TARGET = {"dice": 0.95, "ap@0.5": 0.90, "ap@0.75": 0.70}


def ratio_table(real: dict) -> str:
    """Each row's mean over seeds as a share of the real-label model, against the target."""
    lines = [
        "| row (share of real labels) | "
        + " | ".join(f"{m} (target {t:.2f})" for m, t in TARGET.items())
        + " |",
        "|---|" + "---|" * len(TARGET),
    ]
    for row in ROWS:
        results = [json.loads(p.read_text()) for p in sorted(STUDY.glob(f"{row}-s*/results.json"))]
        if not results:
            continue
        cells = []
        for metric, target in TARGET.items():
            share = np.mean([r["scores"]["synthetic"][metric]["mean"] for r in results])
            share /= real[metric]["mean"]
            cells.append(f"{share:.3f}{' ✓' if share >= target else ''}")
        lines.append(f"| {LABELS[row]} | {' | '.join(cells)} |")
    return "\n".join(lines)


def strict_losses(run: Path, arm: str) -> dict:
    """error_analysis.strict_iou_losses of one run's predictions (arm: pipeline/pred-score or
    pred_real) on the held-back half, summed over its volumes."""
    from cellsynth_cli import io
    from cellsynth_cli.measure.error_analysis import background_detections, strict_iou_losses

    truth = {v.name: v.masks for v in io.read_volumes(run / "real_test")}
    found = [
        {
            **strict_iou_losses(v.masks, truth[v.name]),
            "background": background_detections(v.masks, truth[v.name]),
        }
        for v in io.read_volumes(run / arm)
    ]
    summed = {k: sum(f[k] for f in found) for k in ("matched", "loose", "merges", "background")}
    ratios = np.concatenate([f["area_ratios"] for f in found])
    return {**summed, "area": float(np.median(ratios)) if ratios.size else float("nan")}


def error_table() -> str:
    """Per row (summed over seeds): how the synthetic-trained Cellpose loses AP@0.75."""
    lines = [
        "| row | matched at IoU 0.5 | of them below 0.75 | merges | area / real nucleus | "
        "in background |",
        "|---|---|---|---|---|---|",
    ]
    reference = None
    for row in ROWS:
        runs = [p.parent for p in sorted(STUDY.glob(f"{row}-s*/results.json"))]
        if not runs:
            continue
        found = [strict_losses(r, "pipeline/pred-score") for r in runs]
        reference = reference or strict_losses(runs[0], "pred_real")
        lines.append(
            f"| {LABELS[row]} | {sum(f['matched'] for f in found)} | "
            f"{sum(f['loose'] for f in found)} | {sum(f['merges'] for f in found)} | "
            f"{np.median([f['area'] for f in found]):.2f} | "
            f"{sum(f['background'] for f in found)} |"
        )
    if reference is not None:
        lines.append(
            f"| real labels (one run) | {reference['matched']} | {reference['loose']} | "
            f"{reference['merges']} | {reference['area']:.2f} | {reference['background']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", default=",".join(ROWS), help="comma-separated: " + ",".join(ROWS))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--table-only", action="store_true")
    parser.add_argument("--budget", default=None, help="the recipe's budget (default: full)")
    args = parser.parse_args()
    STUDY.mkdir(parents=True, exist_ok=True)
    if not args.table_only:
        rows = [r.strip() for r in args.rows.split(",") if r.strip()]
        unknown = sorted(set(rows) - set(ROWS))
        if unknown:
            sys.exit(f"unknown rows {unknown}; rows: {', '.join(ROWS)}")
        seeds = [int(s) for s in args.seeds.split(",")]
        for seed in seeds:
            for row in rows:
                run(row, seed, finished_real_arm(), args.budget)
    every_run = [json.loads(p.read_text()) for p in sorted(STUDY.glob("*-s*/results.json"))]
    text = HEADER + machines_line(every_run) + "\n\n" + table() + "\n\n"
    text += ERRORS_HEADER + error_table() + "\n"
    (STUDY / "report.md").write_text(text)
    print(text)


HEADER = """# Study: Cellpose trained on synthetic images only, scored on the held-back half

Every row is `make experiment` (scripts/experiment.py, the pipeline's recipe with the row's
`--set` keys) with one change on the synthetic side:
the same data halves, a 6000-step DDPM per seed, 16 sketches from `simulate fit` (64 in
the 64-image row), Cellpose 300 epochs x 16 images per arm. Mean over the seeds listed
(min-max when more than one).
phantom / vanished: the real-label model segments the synthetic training images, matched
to their own masks at IoU 0.5. Minutes of compute: the synthetic arm, DDPM included.

"""

ERRORS_HEADER = """## Where AP@0.75 is lost

The synthetic-trained Cellpose on the held-back half, summed over a row's seeds: real nuclei
it finds at IoU 0.5 but not at 0.75, predictions that hold most of two or more real nuclei
(merged neighbours), how large its nuclei are drawn (median area over the real one), and
predictions lying mostly outside every real nucleus (background outlined as nuclei: these
cost AP@0.5 too).

"""


if __name__ == "__main__":
    main()
