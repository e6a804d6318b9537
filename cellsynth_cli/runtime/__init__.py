"""Where work runs: the Dask cluster and the per-volume stage runner, torchrun, the device,
free memory, the model cache."""
