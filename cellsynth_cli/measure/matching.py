"""Instance matching and segmentation scores: Dice, AP at an IoU threshold, precision/recall/F1.

Instances are matched one-to-one by maximising total IoU (Hungarian) among pairs with
IoU >= threshold. AP follows the cellpose / stardist convention: TP / (TP + FP + FN).
Dice is the paper's foreground overlap: 2 |A ∩ B| / (|A| + |B|) of the binary masks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from cellsynth_cli.errors import InputError


def iou_matrix(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(IoU[ref_i, pred_j], ref ids, pred ids) from one pass over the voxels."""
    if pred.shape != ref.shape:
        raise InputError(f"mask shapes differ: {pred.shape} vs {ref.shape}")
    ref_ids, ref_inv = np.unique(ref, return_inverse=True)
    pred_ids, pred_inv = np.unique(pred, return_inverse=True)
    pair = ref_inv.ravel().astype(np.int64) * pred_ids.size + pred_inv.ravel()
    overlap = np.bincount(pair, minlength=ref_ids.size * pred_ids.size).reshape(
        ref_ids.size, pred_ids.size
    )
    ref_size = overlap.sum(axis=1, keepdims=True)
    pred_size = overlap.sum(axis=0, keepdims=True)
    iou = overlap / np.maximum(ref_size + pred_size - overlap, 1)
    keep_r, keep_p = ref_ids > 0, pred_ids > 0  # drop background
    return iou[np.ix_(keep_r, keep_p)], ref_ids[keep_r], pred_ids[keep_p]


@dataclass
class Matches:
    tp: int
    fp: int
    fn: int
    matched_pred: np.ndarray  # pred ids with a partner
    matched_ref: np.ndarray


def _pairs(iou: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(reference rows, prediction columns) of IoU's one-to-one matches at >= threshold."""
    cost = np.where(iou >= threshold, iou, 0.0)
    rows, cols = linear_sum_assignment(cost, maximize=True)
    good = cost[rows, cols] >= threshold
    return rows[good], cols[good]


def match(pred: np.ndarray, ref: np.ndarray, threshold: float = 0.5) -> Matches:
    iou, ref_ids, pred_ids = iou_matrix(pred, ref)
    if iou.size == 0:
        return Matches(
            0, int(pred_ids.size), int(ref_ids.size), np.array([], int), np.array([], int)
        )
    rows, cols = _pairs(iou, threshold)
    tp = int(rows.size)
    return Matches(
        tp, int(pred_ids.size) - tp, int(ref_ids.size) - tp, pred_ids[cols], ref_ids[rows]
    )


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    a, b = pred > 0, ref > 0
    total = int(a.sum() + b.sum())
    return 1.0 if total == 0 else float(2 * np.logical_and(a, b).sum() / total)


def segmentation_scores(pred: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    scores: dict[str, float] = {"dice": dice(pred, ref)}
    for threshold in (0.5, 0.75):
        m = match(pred, ref, threshold)
        denominator = m.tp + m.fp + m.fn
        scores[f"ap@{threshold}"] = 1.0 if denominator == 0 else m.tp / denominator
        if threshold == 0.5:
            precision = m.tp / (m.tp + m.fp) if m.tp + m.fp else 0.0
            recall = m.tp / (m.tp + m.fn) if m.tp + m.fn else 0.0
            scores.update(
                precision=precision,
                recall=recall,
                f1=2 * precision * recall / (precision + recall) if precision + recall else 0.0,
                tp=m.tp,
                fp=m.fp,
                fn=m.fn,
            )
    return scores


def match_counts(predicted: np.ndarray, masks: np.ndarray) -> dict:
    """Phantom (predicted, not in the masks) and vanished (in the masks, not predicted)
    shares at IoU 0.5, with the two cell counts."""
    m = match(predicted, masks, 0.5)
    n_pred, n_ref = m.tp + m.fp, m.tp + m.fn
    return {
        "phantom": m.fp / n_pred if n_pred else 0.0,
        "vanished": m.fn / n_ref if n_ref else 0.0,
        "n_predicted": n_pred,
        "n_simulated": n_ref,
    }


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
