"""Cellpose trained from scratch: the one adapter to its internals, training slices, train,
predict, QC, background squares."""
