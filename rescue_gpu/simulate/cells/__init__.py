"""Procedural single-cell images with known classes: imaging flow cytometry and blood smears.

Two assays:

``"ifc"``
    Label-free imaging flow cytometry of bone marrow. Plane ``Ch1`` is bright-field (a
    darker, absorbing cell body with a bright halo at its edge on a flat grey
    background), plane ``Ch6`` dark-field / side scatter (a dark background and a
    speckled signal that grows with the cell's granularity). 12-bit counts stored as
    uint16; crops differ in size from cell to cell, like IDEAS exports.
``"smear"``
    May-Grünwald-Giemsa stained smear crops in the 15 LMU classes, RGB uint8: a white
    cell centred among red cells, coloured by a Beer-Lambert mix of stains (purple
    nucleus, blue / grey-blue / pink cytoplasm, granules by class).

Cells are drawn in vectorised batches of one class: per-cell coordinate grids, polar
outlines ``r(θ) = r0 (1 + Σ_k a_k cos(kθ + φ_k))``, nuclei as unions of ellipses (round,
bilobed, band, segmented) minus an indenting disc (kidney shapes), chromatin and
granules from smoothed noise. Class parameter ranges overlap (blast and monocyte size,
lymphocyte and erythroid size, granularity of monocytes and granulocytes) so that shape
and texture matter. Each patient has a :class:`PatientStyle` (illumination, stain,
focus, noise, magnification) drawn from its seed, so held-out patients are a real test
of generalisation.

The pixel work runs in small numba kernels (compiled on first use, then cached; no
fast-math, so results do not depend on the vector width); the random numbers come from
one numpy ``Generator`` per class and seed, so the same seeds give the same pixels.

:func:`simulate_cell_library` writes a training library (``train/<class>/<patient>/``),
unlabelled samples of new patients with known leukaemic fractions, ``samples.csv`` and
``truth.csv``, in any of the layouts :mod:`rescue_gpu.cells` reads.

Modules, by concern: :mod:`.tables` (assays, classes, shapes and looks), :mod:`.styles`
(per-patient style), :mod:`.noise` and :mod:`.kernels` (random fields, numba pixel
kernels), :mod:`.geometry` (outlines, nuclei), :mod:`.ifc` and :mod:`.smear` (the two
renderers), :mod:`.draw` (public drawing API), :mod:`.library` (the library writer) and
:mod:`.write` (image writers for the layouts the cells assay reads) and :mod:`.subtype` (AML
genetic-subtype patients: normal white cells plus a minority of subtype-specific abnormal
cells, with the truth of which cells are abnormal; :func:`simulate_subtype_cohort`).
"""

from .draw import draw_labels, simulate_cells
from .library import CellLibrarySummary, simulate_cell_library
from .styles import PatientStyle, patient_style
from .subtype import SUBTYPES, simulate_subtype_cohort, simulate_subtype_patient
from .tables import ASSAYS, LAYOUTS, assay_channels, assay_classes

__all__ = [
    "ASSAYS",
    "LAYOUTS",
    "PatientStyle",
    "CellLibrarySummary",
    "assay_classes",
    "assay_channels",
    "patient_style",
    "simulate_cells",
    "draw_labels",
    "simulate_cell_library",
    "SUBTYPES",
    "simulate_subtype_patient",
    "simulate_subtype_cohort",
]
