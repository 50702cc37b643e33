"""rescue_gpu: GPU-accelerated, cohort-scale MRD detection from flow cytometry."""

from .errors import RescueError

__version__ = "0.1.0"

__all__ = ["RescueError", "__version__"]
