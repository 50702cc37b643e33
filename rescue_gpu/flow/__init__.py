"""The flow cytometry MRD assay: per-sample stages, scoring on the shared runner, event flags, outputs, CLI, demo."""
