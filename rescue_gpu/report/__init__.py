"""Run reports: the HTML page toolkit (:mod:`.page`) and each assay's sections (:mod:`.flow`, :mod:`.cells`).

Import from the submodules; this package imports nothing.
"""
