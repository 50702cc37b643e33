"""The flow cytometry MRD assay: FCS events -> reference UMAP -> image -> network -> MRD call.

Per-sample stages, the assay on the shared runner, the network record, dataset and training,
event flags, outputs, CLIs and the demo.
"""
