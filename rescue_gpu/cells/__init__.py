"""The single-cell image assay: pipeline spec, reading and preparing crops, the cell network and
its record, training, readout, and scoring on the shared runner (:mod:`.assay`), outputs, CLI."""
