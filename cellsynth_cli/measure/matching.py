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
