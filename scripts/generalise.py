"""`make generalise` (issue 46): the recipe on every data set of the bench (bench_data.py).

First, in seconds, how right `simulate fit` is on each set's unlabelled training images
against their labels (which the fit never reads): nuclei per image, median radius, and the
share of the labelled nuclei whose brightness lies inside the fitted range. Then, for each
budget, `make experiment` on each set (scripts/experiment.py: `cellsynth pipeline` on the
unlabelled training part, labels used only to score the held-back part, beside Cellpose
trained on the training part's labels with the same Cellpose budget and seed): Dice / AP@0.5
/ AP@0.75 / F1 of both arms, their ratios, and each arm's recall on the dimmest fifth of the
held-back nuclei (at IoU 0.5).

    python scripts/generalise.py --fit-only                 # the fit table (a minute)
    python scripts/generalise.py --budgets quick            # + every set at the quick budget
    python scripts/generalise.py --sets dsb2018-dim --budgets quick,standard
    python scripts/generalise.py --sets cells3d --budgets quick --seeds 0,1,2   # a small set

Everything goes to generalise_out/ (GENERALISE_OUT): data/NAME/ (the bench's folders),
fit/NAME/ (fit.toml, fit.png), runs/NAME-BUDGET/ (experiment.py's output; a run whose
results.json exists is not run again) and report.md.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))

import bench_data  # noqa: E402

from cellsynth_cli import io  # noqa: E402
from cellsynth_cli.measure.outline import outline_profile  # noqa: E402
from cellsynth_cli.runtime.device import described, machine  # noqa: E402

OUT = Path(os.environ.get("GENERALISE_OUT", REPO / "generalise_out"))
# the bar for the fit: size within 15 %, count within 20 %, brightness reaching 95 %
SIZE_TOLERANCE, COUNT_TOLERANCE, BRIGHTNESS_REACH = 0.15, 0.20, 0.95


def labelled_nuclei(volume: io.Volume) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per labelled nucleus: equal-area (2D) / equal-volume (3D) radius in in-plane pixels,
    whether it is whole (touches no in-plane border), and its labels."""
    masks = volume.masks
    labels, sizes = np.unique(masks[masks > 0], return_counts=True)
    if masks.ndim == 3 and volume.voxel_size:
        # a z voxel holds (z step / in-plane step) in-plane voxels of volume
        sizes = sizes * volume.voxel_size[0] / volume.voxel_size[-1]
        radius = (3 * sizes / (4 * np.pi)) ** (1 / 3)
    else:
        radius = np.sqrt(sizes / np.pi)
    edge = np.zeros(masks.shape, bool)
    edge[..., 0, :] = edge[..., -1, :] = edge[..., :, 0] = edge[..., :, -1] = True
    whole = ~np.isin(labels, np.unique(masks[edge]))
    return radius, whole, labels


def counted(radius: np.ndarray, whole: np.ndarray, ndim: int) -> float:
    """Labelled nuclei counted as the fit counts its own (detect.region_detections): a nucleus
    cut by the border in proportion to its size against the median whole one."""
    typical = np.median(radius[whole]) if whole.any() else np.median(radius)
    return float(np.sum(np.where(whole, 1.0, np.minimum(1.0, (radius / typical) ** ndim))))


def label_brightness(volume: io.Volume, labels: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Each labelled nucleus's mean intensity on the fit's [0, 1] scale (LO, HI)."""
    from scipy import ndimage

    means = ndimage.mean(volume.image.astype(np.float64), volume.masks, labels)
    return (np.asarray(means) - lo) / (hi - lo)


def fit_row(name: str) -> dict:
    """simulate fit on NAME's unlabelled training images, against their labels."""
    from cellsynth_cli.io.intensity import robust_range
    from cellsynth_cli.simulate.fit import fit_nuclei, save_fit_picture, to_toml

    folders = bench_data.build(name, OUT / "data" / name)
    fit = fit_nuclei(folders["real_train_unlabelled"])
    out = OUT / "fit" / name
    io.write_text(out / "fit.toml", to_toml(fit, folders["real_train_unlabelled"]), overwrite=True)
    save_fit_picture(out / "fit.png", fit, folders["real_train_unlabelled"])
    volumes = list(io.read_volumes(folders["real_train"]))
    lo, hi = robust_range([v.image for v in volumes])
    radii, counts, brightness = [], [], []
    for volume in volumes:
        radius, whole, labels = labelled_nuclei(volume)
        radii.append(radius[whole])
        counts.append(counted(radius, whole, volume.masks.ndim))
        brightness.append(label_brightness(volume, labels, lo, hi))
    radii, brightness = np.concatenate(radii), np.concatenate(brightness)
    floor, top = fit.config.intensity
    fitted_counts = [d.count for d in fit.detections]
    fitted_radius = float(fit.estimates["radius (px, median)"])
    return {
        "name": name,
        "count": float(np.mean(counts)),
        "fitted count": float(np.mean(fitted_counts)),
        "radius": float(np.median(radii)),
        "fitted radius": fitted_radius,
        "reach": float(np.mean((brightness >= floor) & (brightness <= top))),
        "above floor": float(np.mean(brightness >= floor)),
        "floor": floor,
        "dimmest tenth": float(np.percentile(brightness, 10)),
        "detector": fit.estimates["detector"],
    }


def fit_table(rows: list[dict]) -> str:
    head = "| set | nuclei / image (labels, fit) | radius px (labels, fit) | brightness reached "
    head += "| fit's floor, labels' 10th pct | detector | within the bar |"
    lines = [head, "|---|---|---|---|---|---|---|"]
    for r in rows:
        count_ok = abs(r["fitted count"] / r["count"] - 1) <= COUNT_TOLERANCE
        size_ok = abs(r["fitted radius"] / r["radius"] - 1) <= SIZE_TOLERANCE
        reach_ok = r["reach"] >= BRIGHTNESS_REACH
        verdict = ", ".join(
            f"{what} {'yes' if ok else 'NO'}"
            for what, ok in (("count", count_ok), ("size", size_ok), ("brightness", reach_ok))
        )
        lines.append(
            f"| {r['name']} | {r['count']:.0f}, {r['fitted count']:.1f} "
            f"({r['fitted count'] / r['count']:.2f}x) | {r['radius']:.1f}, "
            f"{r['fitted radius']:.1f} ({r['fitted radius'] / r['radius']:.2f}x) | "
            f"{r['reach']:.0%} ({r['above floor']:.0%} above the floor) | {r['floor']:.3f}, "
            f"{r['dimmest tenth']:.3f} | {r['detector']} | {verdict} |"
        )
    return "\n".join(lines)


METRICS = ("dice", "ap@0.5", "ap@0.75", "f1")
DIM_SHARE = 0.2  # the dimmest fifth of the held-back nuclei


def run_experiment(name: str, budget: str, seed: int = 0) -> dict:
    """experiment.py on NAME at BUDGET with the simulation, synthesis and both arms' Cellpose
    at SEED (once: a finished run's results.json is read)."""
    import json
    import subprocess

    out = OUT / "runs" / (f"{name}-{budget}" + (f"-seed{seed}" if seed else ""))
    if not (out / "results.json").exists():
        command = [sys.executable, str(REPO / "scripts" / "experiment.py"), "--dataset", name]
        seeds = [f"--set={stage}.seed={seed}" for stage in ("simulate", "synthesize", "segment")]
        subprocess.run([*command, "--budget", budget, *seeds, "--out", str(out)], check=True)
    results = json.loads((out / "results.json").read_text())
    test = out / "real_test"
    predictions = {"synthetic": out / "pipeline" / "pred-score", "real": out / "pred_real"}
    results["dim_recall"] = {arm: dim_recall(folder, test) for arm, folder in predictions.items()}
    results["outline"] = {
        "real labels": outline_profile(test),
        "synthetic": outline_profile(out / "pipeline" / "clean"),
    }
    return results


def dim_recall(predictions: Path, test: Path) -> float:
    """Share of the dimmest fifth of TEST's labelled nuclei (mean intensity, over the whole
    set) that PREDICTIONS find at IoU 0.5."""
    from scipy import ndimage

    from cellsynth_cli.measure.matching import match

    means, found = [], []
    for path in io.list_volumes(test):
        volume = io.read_volume(path)
        labels = np.unique(volume.masks[volume.masks > 0])
        pred = io.read_volume(io.volume_path(predictions, volume.name)).masks
        matched = match(pred, volume.masks, 0.5).matched_ref
        means.append(ndimage.mean(volume.image.astype(np.float64), volume.masks, labels))
        found.append(np.isin(labels, matched))
    means, found = np.concatenate(means), np.concatenate(found)
    dimmest = means <= np.quantile(means, DIM_SHARE)
    return float(found[dimmest].mean())


# the bar for the pipeline: the no-label arm's AP against the real-label arm's, and
# its recall on the dimmest fifth of the nuclei within 0.05 of the real-label arm's
AP50_RATIO, AP75_RATIO, DIM_RECALL_GAP = 0.95, 0.90, 0.05


def score_table(budget: str, runs: dict[str, list[dict]]) -> str:
    """Both arms' held-back scores per set (mean and range over the seeds run), the ratio of
    the means, recall on the dimmest fifth, and whether the set meets the bar."""
    head = "| set | arm | " + " | ".join(METRICS) + " | recall, dimmest fifth |"
    lines = [f"### Budget {budget}", "", head, "|---|---|" + "---|" * (len(METRICS) + 1)]
    for name, seeds in runs.items():
        means = {}
        for arm, key in (("no labels", "synthetic"), ("real labels", "real")):
            values = {m: [r["scores"][key][m]["mean"] for r in seeds] for m in METRICS}
            means[key] = {m: float(np.mean(v)) for m, v in values.items()}
            means[key]["dim"] = float(np.mean([r["dim_recall"][key] for r in seeds]))
            cells = [_spread(values[m]) for m in METRICS]
            lines.append(f"| {name} | {arm} | {' | '.join(cells)} | {means[key]['dim']:.2f} |")
        synthetic, real = means["synthetic"], means["real"]
        gap = synthetic["dim"] - real["dim"]
        # a real-label arm that found nothing has no ratio to give
        cells = [f"{synthetic[m] / real[m]:.2f}x" if real[m] > 0 else "n/a" for m in METRICS]
        lines.append(f"| {name} | ratio ({len(seeds)} seeds) | {' | '.join(cells)} | {gap:+.2f} |")
    lines += ["", f"Bar: AP@0.5 >= {AP50_RATIO}x, AP@0.75 >= {AP75_RATIO}x the real-label arm's,"]
    lines += [f"recall on the dimmest fifth within {DIM_RECALL_GAP} of it.", ""]
    lines += _outline_lines({name: seeds[0] for name, seeds in runs.items()})
    return "\n".join(lines)


def _spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{np.mean(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def _outline_lines(runs: dict[str, dict]) -> list[str]:
    lines = ["Where nuclei end against their masks (measure/outline.py; crossing: px past"]
    lines += ["the outline where they fall halfway to background; halo: mean 1-3 px out, 0-1):", ""]
    lines += ["| set | real labels: crossing, halo | synthetic: crossing, halo |", "|---|---|---|"]
    for name, r in runs.items():
        real, synthetic = r["outline"]["real labels"], r["outline"]["synthetic"]
        lines.append(
            f"| {name} | {real.crossing:+.2f} px, {real.halo:.2f} | "
            f"{synthetic.crossing:+.2f} px, {synthetic.halo:.2f} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sets", default=",".join(bench_data.DATASETS))
    parser.add_argument("--fit-only", action="store_true", help="only the fit table (a minute)")
    parser.add_argument("--budgets", default="quick,standard", help="pipeline budgets to run")
    parser.add_argument(
        "--seeds", default="0", help="seeds of simulation, synthesis and Cellpose (0,1,2: three)"
    )
    args = parser.parse_args()
    seeds = [int(seed) for seed in args.seeds.split(",")]
    names = args.sets.split(",")
    unknown = sorted(set(names) - set(bench_data.DATASETS))
    if unknown:
        parser.error(f"unknown sets {unknown}; sets: {', '.join(bench_data.DATASETS)}")
    rows = []
    for name in names:
        print(f"== fit: {name}", flush=True)
        rows.append(fit_row(name))
    text = (
        "# Generalisation bench (issue 46)\n\n"
        f"{described(machine())}.\n\n"
        "## `simulate fit` on the unlabelled training images, against their labels\n\n"
        f"Bar: count within {COUNT_TOLERANCE:.0%}, median radius within {SIZE_TOLERANCE:.0%}, "
        f"the fitted brightness range holding {BRIGHTNESS_REACH:.0%} of the labelled nuclei "
        "(their mean on the fit's intensity scale).\n\n" + fit_table(rows) + "\n"
    )
    if not args.fit_only:
        text += "\n## The pipeline against Cellpose on the real labels (held-back part)\n"
        for budget in args.budgets.split(","):
            runs = {name: [run_experiment(name, budget, seed) for seed in seeds] for name in names}
            text += "\n" + score_table(budget, runs) + "\n"
    io.write_text(OUT / "report.md", text, overwrite=True)
    print(text)


if __name__ == "__main__":
    main()
