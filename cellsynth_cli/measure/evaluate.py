"""The `evaluate` stage: score synthetic volumes against real ones, paired by name.

Common scale (default `ref-percentiles`): both images are mapped with the reference's 1st and
99.8th percentiles to [0, 1] and clipped there, so PSNR uses data_range = 1 and scores do not
depend on the real data's units. `none` compares raw values with data_range = the given
`--data-range` or the reference's max - min.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cellsynth_cli import io
from cellsynth_cli.errors import InputError
from cellsynth_cli.io.intensity import robust_range, to_unit
from cellsynth_cli.measure.config import SCALE, SCALES
from cellsynth_cli.measure.metrics import mae, psnr, ssim

METRICS = ("psnr", "ssim", "mae")


@dataclass
class Evaluation:
    rows: list[dict]
    summary: dict[str, dict[str, float]]
    unpaired_pred: list[str]
    unpaired_ref: list[str]
    scale: str

    def to_dict(self) -> dict:
        return {
            "volumes": self.rows,
            "summary": self.summary,
            "scale": self.scale,
            "unpaired_pred": self.unpaired_pred,
            "unpaired_ref": self.unpaired_ref,
        }


def _by_name(directory: Path) -> dict[str, Path]:
    return {io.volume_name(p): p for p in io.list_volumes(directory)}


def names_pair(pred_dir: Path, ref_dir: Path) -> bool:
    """Whether at least one volume name appears in both directories."""
    return bool(set(_by_name(pred_dir)) & set(_by_name(ref_dir)))


def score_pair(
    pred: np.ndarray,
    ref: np.ndarray,
    scale: str = SCALE,
    data_range: float | None = None,
    labels: np.ndarray | None = None,
) -> dict[str, float]:
    if pred.shape != ref.shape:
        raise InputError(f"shapes differ: prediction {pred.shape} vs reference {ref.shape}")
    if scale == "ref-percentiles":
        lo, hi = robust_range([ref])
        pred_s, ref_s = to_unit(pred, lo, hi), to_unit(ref, lo, hi)
        data_range = data_range or 1.0
    elif scale == "none":
        pred_s, ref_s = pred.astype(np.float64), ref.astype(np.float64)
        data_range = data_range or float(ref.max() - ref.min()) or 1.0
    else:
        raise InputError(f"--scale must be one of {', '.join(SCALES)}, got {scale!r}")
    if labels is not None:
        if labels.shape != ref.shape:
            raise InputError(f"masks {labels.shape} do not match the images {ref.shape}")
        outside = labels == 0
        pred_s = np.where(outside, 0, pred_s)
        ref_s = np.where(outside, 0, ref_s)
    return {
        "psnr": psnr(pred_s, ref_s, data_range),
        "ssim": ssim(pred_s, ref_s, data_range),
        "mae": mae(pred_s, ref_s),
        "data_range": data_range,
    }


def evaluate(
    pred_dir: Path,
    ref_dir: Path,
    scale: str = SCALE,
    data_range: float | None = None,
    mask_labels: bool = False,
    on_volume: Callable[[str], None] | None = None,
) -> Evaluation:
    pred, ref = _by_name(pred_dir), _by_name(ref_dir)
    names = sorted(set(pred) & set(ref))
    if not names:
        raise InputError(
            f"no volume names in common between {pred_dir} and {ref_dir} "
            f"(pred: {', '.join(sorted(pred))}; ref: {', '.join(sorted(ref))})"
        )
    rows = []
    for name in names:
        p, r = io.read_volume(pred[name]), io.read_volume(ref[name])
        if p.image is None:
            raise InputError(f"{pred[name]}: no image to evaluate (a sketch only?)")
        if r.image is None:
            raise InputError(f"{ref[name]}: no reference image")
        labels = None
        if mask_labels:
            labels = r.masks if r.masks is not None else p.masks
            if labels is None:
                raise InputError(f"--mask-labels: neither {ref[name]} nor {pred[name]} has masks")
        try:
            scores = score_pair(p.image, r.image, scale, data_range, labels)
        except InputError as exc:
            raise InputError(f"{name}: {exc}") from None
        rows.append({"name": name, **scores})
        if on_volume:
            on_volume(name)
    summary = {
        m: {
            "mean": float(np.mean([row[m] for row in rows])),
            "sd": float(np.std([row[m] for row in rows])),
        }
        for m in METRICS
    }
    return Evaluation(
        rows=rows,
        summary=summary,
        scale=scale,
        unpaired_pred=sorted(set(pred) - set(ref)),
        unpaired_ref=sorted(set(ref) - set(pred)),
    )


def write_csv(evaluation: Evaluation, path: Path, overwrite: bool = False) -> Path:
    with io.atomic_file(path, overwrite) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["name", *METRICS, "data_range"])
        for row in evaluation.rows:
            writer.writerow([row["name"], *(f"{row[m]:.6g}" for m in METRICS), row["data_range"]])
    return path
