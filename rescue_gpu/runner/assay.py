"""The contract between the runner and an assay, and the records they exchange.

An assay (flow cytometry MRD, single-cell images, ...) has two halves:

- :class:`Assay`, on the client: what the run is (its settings record and identity, how
  to tell an input is unchanged, how to build the worker job, how to write outputs);
- :class:`AssayJob`, small and picklable, sent to every worker: how to load the worker's
  state once (reference, model, engine), process a batch of tasks with it, and describe a
  sample whose batch was lost.

The runner (:func:`rescue_gpu.runner.run.run_cohort`) calls only these methods; it never
imports an assay.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

    from ..device import DevicePlan
    from ..config import RuntimeConfig
    from .manifest import ManifestRow
    from .store import RunStore

__all__ = ["SampleTask", "SampleResult", "AssayJob", "Assay", "RunContext"]


@dataclass(frozen=True)
class SampleTask:
    """One sample to process (built from a manifest row; picklable)."""

    sample_id: str
    path: str
    patient_id: str = ""
    timepoint: str = ""
    label: str = ""


@dataclass
class SampleResult:
    """What a worker returns for one sample: the store record and its arrays."""

    record: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        """Whether the sample failed."""
        return self.record.get("status") != "scored"

    @property
    def warnings(self) -> list[str]:
        """The sample's non-fatal warnings (record field ``warnings``; empty when none)."""
        return list(self.record.get("warnings") or [])


@dataclass(frozen=True)
class RunContext:
    """What the runner resolved before building the worker job.

    Attributes
    ----------
    run_dir
        The run directory (exists; locked by this run).
    device
        The device resolved once on the client (backend, engine kind, precision).
    runtime
        The runtime config (workers, threads, memory, inference batch size).
    settings_hash
        sha256 of the assay's settings record (see :func:`rescue_gpu.runner.identity.settings_hash`).
    """

    run_dir: Path
    device: DevicePlan
    runtime: RuntimeConfig
    settings_hash: str


@runtime_checkable
class AssayJob(Protocol):
    """The worker half of an assay: small, picklable, sent once to every worker.

    Attributes
    ----------
    keep_identifiers
        Whether input paths may appear in records and messages.
    """

    keep_identifiers: bool

    def state_key(self) -> Hashable:
        """What identifies this job's worker state (paths, checksums, device): equal keys share a state."""
        ...

    def load_state(self) -> Any:
        """Load this worker's state (reference, model, engine); raises when it cannot."""
        ...

    def process(self, tasks: Sequence[SampleTask], state: Any) -> list[SampleResult]:
        """Process a batch with the loaded state; never raises for a bad sample."""
        ...

    def lost(self, task: SampleTask, text: str) -> SampleResult:
        """The failed result of a sample whose batch was lost or whose state did not load."""
        ...


class OptionsAssay:
    """The ``precision``, ``samples_per_task`` and ``window`` of an :class:`Assay`, read from its ``options``.

    A base for assays whose options object carries those three fields (both assays' score options do).
    """

    options: Any

    @property
    def precision(self) -> str:
        """The precision asked for."""
        return self.options.precision

    @property
    def samples_per_task(self) -> int:
        """Samples one task processes."""
        return self.options.samples_per_task

    @property
    def window(self) -> int:
        """Tasks in flight at once (0: twice the workers)."""
        return self.options.window


@runtime_checkable
class Assay(Protocol):
    """The client half of an assay, as :func:`~rescue_gpu.runner.run.run_cohort` uses it.

    Attributes
    ----------
    kind
        The assay's name in the run store (``"flow"``, ``"cells"``).
    unit
        What a record's ``n_<unit>`` field counts (``"events"``, ``"cells"``): the progress rate.
    packages
        Distributions whose versions go into provenance.
    engine, precision
        The engine kind and precision asked for (resolved by the runner, once).
    samples_per_task, window
        Samples one task processes; tasks in flight at once (0: twice the workers).
    """

    kind: str
    unit: str
    packages: tuple[str, ...]
    engine: str
    precision: str
    samples_per_task: int
    window: int

    def settings(self, device: DevicePlan) -> dict[str, Any]:
        """The settings that change a sample's stored result (hashed for resume)."""
        ...

    def worker_job(self, context: RunContext) -> AssayJob:
        """The job every worker gets for this run."""
        ...

    def identity(self, job: AssayJob) -> dict[str, str]:
        """Provenance fields a stored sample must match to be skipped (settings hash, model sha256, ...)."""
        ...

    def same_input(self, path: Path, provenance: dict[str, Any]) -> bool:
        """Whether ``path`` still holds the input recorded in ``provenance``."""
        ...

    def run_record(self) -> dict[str, Any]:
        """Extra fields of the store's run attributes (e.g. the model's threshold)."""
        ...

    def write_outputs(self, rows: Sequence[ManifestRow], store: RunStore, run_dir: Path, *,
                      provenance: dict[str, Any]) -> tuple[pd.DataFrame, dict[str, Path]]:
        """Write the run's tables and report from the store; return the score table and the paths."""
        ...
