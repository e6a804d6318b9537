"""Where a segmenter's instances fail a strict IoU (AP@0.75) and which false positives are
made of background: the error tables of `segment score`, the pipeline's report and the
studies (scripts/study.py)."""

from __future__ import annotations

import numpy as np

from cellsynth_cli.errors import InputError
from cellsynth_cli.measure.matching import _pairs, iou_matrix


def strict_iou_losses(pred: np.ndarray, ref: np.ndarray) -> dict:
    """Where instances found at IoU 0.5 fail a stricter threshold (AP@0.75): `loose` reference
    cells matched at 0.5 but below 0.75, `merges` predictions covering most (> half) of two or
    more reference cells, and `area_ratios` (prediction / reference area of each match at 0.5;
    above 1: drawn too large)."""
    iou, ref_ids, pred_ids = iou_matrix(pred, ref)
    if iou.size == 0:
        return {"matched": 0, "loose": 0, "merges": 0, "area_ratios": np.zeros(0)}
    ref_area = np.bincount(ref.ravel())[ref_ids]
    pred_area = np.bincount(pred.ravel())[pred_ids]
    # IoU = I / (a + b - I), so I = IoU (a + b) / (1 + IoU)
    overlap = iou * (ref_area[:, None] + pred_area[None, :]) / (1.0 + iou)
    mostly_covered = (overlap / ref_area[:, None]) > 0.5  # [ref, pred]
    rows, cols = _pairs(iou, 0.5)
    return {
        "matched": int(rows.size),
        "loose": int((iou[rows, cols] < 0.75).sum()),
        "merges": int((mostly_covered.sum(axis=0) >= 2).sum()),
        "area_ratios": pred_area[cols] / ref_area[rows],
    }


def background_detections(pred: np.ndarray, ref: np.ndarray) -> int:
    """Predicted instances lying mostly (more than half their area) outside every reference
    cell: false positives made of background, not split or shifted cells."""
    if pred.shape != ref.shape:
        raise InputError(f"mask shapes differ: {pred.shape} vs {ref.shape}")
    labels = pred.ravel().astype(np.int64)
    area = np.bincount(labels)
    on_cells = np.bincount(labels, weights=(ref.ravel() > 0))
    present = area[1:] > 0
    return int((present & (on_cells[1:] < 0.5 * area[1:])).sum())


ERROR_KINDS = ("real", "missed", "loose", "merges", "background")


def error_counts(pred: np.ndarray, ref: np.ndarray) -> dict[str, int]:
    """Where a prediction's errors are, in cells: `real` reference cells, `missed` (no
    prediction at IoU 0.5: AP@0.5's losses), `loose` (found at 0.5 but below 0.75: what
    AP@0.75 loses on top), `merges` (predictions over two or more cells) and `background`
    (predictions mostly outside every cell)."""
    losses = strict_iou_losses(pred, ref)
    real = int(np.count_nonzero(np.bincount(ref.ravel().astype(np.int64))[1:]))
    return {
        "real": real,
        "missed": real - losses["matched"],
        "loose": losses["loose"],
        "merges": losses["merges"],
        "background": background_detections(pred, ref),
    }


def describe_errors(counts: dict[str, int]) -> str:
    """error_counts in one line, for people."""
    return (
        f"{counts['real']} real cells: {counts['missed']} missed, {counts['loose']} found "
        f"loosely (IoU 0.5-0.75), {counts['merges']} merged predictions, "
        f"{counts['background']} predictions on background"
    )
