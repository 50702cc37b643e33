"""Lab B: a second, independent cohort generator for transfer tests and benchmarks.

It shares no code with :mod:`rescue_gpu.simulate.flow` (only the FCS writer): another
8-colour panel and fluorochromes, a CytoFLEX-like ``$PnR`` of 2**20, four scatter
parameters, a physically derived ``$SPILLOVER``, curved maturation paths with heavy-tailed
spread, a regenerating-marrow variant, and its own LAIP model. Run
``python -m rescue_gpu.simulate.labb --out DIR --patients N --events E --seed S``.
"""

from .biology import ABERRATIONS, Laip, draw_laip
from .cohort import PIPELINE_FILE, Visit, plan_labb, simulate_labb_cohort
from .panel import CHANNELS, FLUOR, FLUOR_CHANNELS, LABELS, MARKERS, RANGE, nominal_spillover
from .sample import POPULATIONS, LabbSample, simulate_labb_sample

__all__ = ["ABERRATIONS", "Laip", "draw_laip", "PIPELINE_FILE", "Visit", "plan_labb", "simulate_labb_cohort",
           "CHANNELS", "FLUOR", "FLUOR_CHANNELS", "LABELS", "MARKERS", "RANGE", "nominal_spillover", "POPULATIONS",
           "LabbSample", "simulate_labb_sample"]
