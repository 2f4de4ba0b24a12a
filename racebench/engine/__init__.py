"""The run engine: trials, the local and Dask runners, workers, the client guards."""
