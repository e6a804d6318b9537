"""Measuring images and masks: classical nucleus detection, matching and scores, metrics,
realism, label-free QC."""
