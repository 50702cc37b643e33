"""What every assay shares to score a cohort: the :class:`~.assay.Assay` protocol, one
:func:`~.run.run_cohort`, executors (in-process, Dask with a worker plugin), resume
identity, the Zarr run store, manifests, cluster set-up and tabular outputs.

The runner never imports an assay: an assay object hands it what only the assay knows.
Import from the submodules (``rescue_gpu.runner.run``, ``.store``, ...); this package
imports nothing, so importing one part does not load Dask or Zarr.
"""
