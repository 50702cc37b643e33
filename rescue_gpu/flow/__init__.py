"""The flow MRD assay: FCS events -> reference UMAP -> image -> network -> MRD call and MRD %."""
