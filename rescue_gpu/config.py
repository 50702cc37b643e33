"""Typed, validated configuration: ``config.toml`` (how to run) and pipeline files (the science).

Both are read once, at the edge, into frozen dataclasses. Stages never read files
themselves: the runner hands them these values. An unknown key, a wrong type or a bad
value raises :class:`~rescue_gpu.errors.ConfigError` naming the key and the file.
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .errors import ConfigError

__all__ = [
    "TransformSpec", "PanelSpec", "QcSpec", "NormalizeSpec", "PreprocessSpec", "ReferenceSpec", "RasterSpec",
    "HeadSpec", "TrainSpec", "ModelSpec", "Pipeline", "RuntimeConfig", "ClusterConfig", "SlurmConfig",
    "load_pipeline", "load_runtime", "parse_memory", "from_mapping", "PIPELINES_DIR", "pipeline_path", "read_toml",
    "pipeline_record", "pipeline_from_record", "DEFAULT_PIPELINE",
]

PIPELINES_DIR = Path(__file__).resolve().parent.parent / "pipelines"
#: The pipeline commands fall back to when nothing else names one.
DEFAULT_PIPELINE = "aml-mrd"


@dataclass(frozen=True)
class TransformSpec:
    """A per-channel transform: ``logicle`` (Parks/Moore), ``arcsinh`` or ``linear``.

    ``linear`` maps ``x`` to ``x / scale``; ``arcsinh`` to ``arcsinh(x / cofactor)``;
    ``logicle`` uses ``t, w, m, a`` and returns values on the 0..1 display scale.

    ``top = "file"`` takes logicle's ``t`` and linear's ``scale`` from each channel of each
    file instead: its top of scale, ``$PnR`` decoded with ``$PnE``/``$PnG``. Instruments
    of different ranges (``$PnR`` 2**18 on a FACSCanto, 2**20 on a CytoFLEX) then give the
    same display scale, so a reference and model built on one can score the other's files.
    ``top = "fixed"`` (the default) uses the numbers given here for every file.
    """

    kind: Literal["logicle", "arcsinh", "linear"] = "logicle"
    t: float = 262144.0
    w: float = 0.5
    m: float = 4.5
    a: float = 0.0
    cofactor: float = 150.0
    scale: float = 262144.0
    top: Literal["fixed", "file"] = "fixed"

    def __post_init__(self) -> None:
        if self.kind == "logicle" and not (self.t > 0 and self.m > 0 and 0 <= self.w <= self.m / 2):
            raise ConfigError(f"logicle needs t > 0, m > 0 and 0 <= w <= m/2 (got t={self.t}, w={self.w}, m={self.m})")
        if self.kind == "arcsinh" and self.cofactor <= 0:
            raise ConfigError(f"arcsinh needs cofactor > 0 (got {self.cofactor})")
        if self.kind == "linear" and self.scale <= 0:
            raise ConfigError(f"linear needs scale > 0 (got {self.scale})")


@dataclass(frozen=True)
class PanelSpec:
    """The markers a pipeline uses, in output order, and how to find them in a file.

    ``markers`` are matched against ``$PnS`` then ``$PnN`` forgivingly (case, spaces,
    dashes and fluorochrome suffixes ignored); ``aliases`` maps a marker to other names
    it may carry (``"HLA-DR" = ["HLADR", "DR"]``). ``scatter`` names the scatter
    parameters kept in the output (linear scaling). An empty panel keeps every
    parameter except time and event counters.
    """

    markers: tuple[str, ...] = ()
    scatter: tuple[str, ...] = ()
    aliases: dict[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class QcSpec:
    """Quality-control gates; each removes events and is counted.

    Debris thresholds are fractions of the scatter channel's ``$PnR`` range.
    A doublet is an event whose FSC-A / FSC-H ratio exceeds the sample's median
    ratio by more than ``doublet_tolerance`` (relative).
    """

    remove_saturated: bool = True
    remove_debris: bool = True
    debris_fsc_min: float = 0.05
    debris_ssc_min: float = 0.0
    remove_doublets: bool = True
    doublet_tolerance: float = 0.25
    fsc_area: str = "FSC-A"
    fsc_height: str = "FSC-H"
    ssc_area: str = "SSC-A"


@dataclass(frozen=True)
class NormalizeSpec:
    """Per-sample landmark registration of channels onto a reference's landmarks (``[preprocess.normalize]``).

    Samples from instruments or sites whose normal populations sit at other places (scatter
    gains, antigen-negative levels) are registered onto one scale, as flowStats'
    ``gaussNorm``/``warpSet`` register landmarks. Two kinds of landmark:

    - ``method = "landmarks"``: every sample's channel named in ``targets`` is mapped, after
      its transform, by the monotone piecewise-linear function that sends the sample's own
      quantiles at ``quantiles`` onto that channel's ``targets`` (linear beyond the end
      landmarks, with the end segments' slopes). The targets are the mean over the reference
      samples of their own quantiles. A quantile that falls between two populations moves
      with the sample's composition (e.g. CD7's 0.9 quantile when a marrow has few CD7+
      lymphocytes) and then stretches the scale; use ``"peaks"`` for such channels.
    - ``method = "peaks"``: the landmarks are the peaks of each channel's smoothed density
      (Gaussian kernel of standard deviation ``bandwidth``; a peak counts when it reaches
      ``min_height`` of the tallest and is separated from its neighbours by a dip). Each
      sample peak is matched, in order, to the reference peak (``targets``, one or more per
      channel) it lies within ``max_shift`` of; one matched peak shifts the channel, two or
      more map it piecewise-linearly through the pairs, shifted beyond the end pairs. A
      population absent from a sample leaves its target unmatched instead of dragging a
      quantile. ``bandwidth`` and ``max_shift`` are on the transformed scale (about 0-1 for
      the default transforms).

    The targets are computed from the reference cohort
    (:func:`rescue_gpu.preprocess.normalize.landmark_targets`, ``rescue reference
    landmarks``) and written here, so the reference build, training and scoring apply the
    same map. ``method = "none"`` (the default) leaves the events as transformed.
    """

    method: Literal["none", "landmarks", "peaks"] = "none"
    quantiles: tuple[float, ...] = (0.1, 0.5, 0.9)
    targets: dict[str, tuple[float, ...]] = field(default_factory=dict)
    bandwidth: float = 0.02
    min_height: float = 0.05
    max_shift: float = 0.2

    def __post_init__(self) -> None:
        q = self.quantiles
        if len(q) < 2 or not all(0.0 < v < 1.0 for v in q) or any(b <= a for a, b in zip(q, q[1:])):
            raise ConfigError(f"normalize.quantiles needs at least 2 strictly increasing values in (0, 1) (got {list(q)})")
        if not (math.isfinite(self.bandwidth) and self.bandwidth > 0):
            raise ConfigError(f"normalize.bandwidth must be > 0 (got {self.bandwidth})")
        if not 0.0 < self.min_height < 1.0:
            raise ConfigError(f"normalize.min_height must be in (0, 1): a fraction of the tallest peak (got {self.min_height})")
        if not (math.isfinite(self.max_shift) and self.max_shift > 0):
            raise ConfigError(f"normalize.max_shift must be > 0 (got {self.max_shift})")
        if self.method == "none" and self.targets:
            raise ConfigError("normalize.targets is set but method = \"none\"; set method = \"landmarks\" "
                              "or \"peaks\", or remove the targets")
        if self.method != "none" and not self.targets:
            raise ConfigError(f"normalize method = \"{self.method}\" needs [preprocess.normalize.targets]: one list "
                              "of target landmarks per channel to register (`rescue reference landmarks` writes it)")
        for name, t in self.targets.items():
            n_ok = len(t) >= 1 if self.method == "peaks" else len(t) == len(q)
            if not n_ok or any(b <= a for a, b in zip(t, t[1:])) or not all(math.isfinite(v) for v in t):
                want = "one or more finite strictly increasing peak positions" if self.method == "peaks" else \
                    f"{len(q)} finite strictly increasing values, one per quantile in {list(q)}"
                raise ConfigError(f"normalize.targets.{name} needs {want} (got {list(t)})")


@dataclass(frozen=True)
class PreprocessSpec:
    """How raw stored values become the float32 events a reference sees.

    ``compensation`` is ``"file"`` (the sample's own spillover matrix, if any),
    ``"none"``, or a path to a CSV spillover matrix with channel names. With ``"file"`` a
    matrix that does not fit its file fails the sample (never a silent uncompensated run);
    a file without a matrix is processed uncompensated with a warning. ``normalize``
    registers channels onto a reference's landmarks after the transforms
    (:class:`NormalizeSpec`; off by default).
    """

    compensation: str = "file"
    fluorescence: TransformSpec = TransformSpec(kind="logicle")
    scatter: TransformSpec = TransformSpec(kind="linear")
    transforms: dict[str, TransformSpec] = field(default_factory=dict)
    qc: QcSpec = QcSpec()
    normalize: NormalizeSpec = NormalizeSpec()


@dataclass(frozen=True)
class ReferenceSpec:
    """How a reference UMAP is built: the pooled subsample and the UMAP fit parameters."""

    events_per_sample: int = 5000
    max_events: int = 150_000  # total pooled events (0: no cap); see pipelines/aml-mrd.toml
    n_neighbors: int = 15
    min_dist: float = 0.1
    spread: float = 1.0
    metric: Literal["euclidean"] = "euclidean"
    n_epochs: int = 0  # 0: umap-learn's default for the data size
    random_state: int = 0
    min_events: int = 1000

    def __post_init__(self) -> None:
        if self.max_events < 0 or 0 < self.max_events < self.min_events:
            raise ConfigError(f"reference max_events must be 0 (no cap) or at least min_events={self.min_events} "
                              f"(got {self.max_events})")
        if self.events_per_sample < 1 or self.n_neighbors < 2 or self.min_events < self.n_neighbors:
            raise ConfigError("reference needs events_per_sample >= 1, n_neighbors >= 2, min_events >= n_neighbors")
        if not (0 <= self.min_dist <= self.spread):
            raise ConfigError(f"reference needs 0 <= min_dist <= spread (got {self.min_dist}, {self.spread})")


@dataclass(frozen=True)
class RasterSpec:
    """How projected events become an image; stored in the reference so training and scoring agree.

    ``padding`` widens the embedding's bounding box by this fraction on each side to
    give the canvas extent.
    """

    size: int = 128
    channels: tuple[str, ...] = ("density",)
    point_radius: int = 1
    padding: float = 0.05

    def __post_init__(self) -> None:
        bad = [c for c in self.channels if c not in ("density", "scatter", "markers")]
        if bad or not self.channels:
            raise ConfigError(f"raster channels must be among density, scatter, markers (got {list(self.channels)})")
        if self.size < 8 or self.point_radius < 0 or self.padding < 0:
            raise ConfigError("raster needs size >= 8, point_radius >= 0 and padding >= 0")


@dataclass(frozen=True)
class HeadSpec:
    """The classifier head on the ResNet-34 features (the published head's layers are not public).

    ``hidden`` lists the widths of the hidden fully connected layers (empty: a single
    linear layer); each is followed by ``activation`` and dropout ``dropout``.
    """

    hidden: tuple[int, ...] = (256,)
    dropout: float = 0.3
    activation: Literal["relu", "gelu", "silu"] = "relu"

    def __post_init__(self) -> None:
        if any(w < 1 for w in self.hidden) or not (0.0 <= self.dropout < 1.0):
            raise ConfigError(f"head needs positive widths and 0 <= dropout < 1 (got {self.hidden}, {self.dropout})")


@dataclass(frozen=True)
class TrainSpec:
    """Training settings: cross-validation, optimiser, schedule, augmentation, threshold."""

    folds: int = 5
    max_epochs: int = 40
    patience: int = 6
    batch_size: int = 32
    learning_rate: float = 3e-4
    weight_decay: float = 1e-4
    augment_copies: int = 4        # bootstrap re-renders per sample and epoch pool
    intensity_jitter: float = 0.05  # relative multiplicative noise on image intensities
    shift_copies: int = 0          # instrument-shifted copies of each training sample, each projected once (0: off)
    shift_gain: float = 0.1        # SD of the log per-channel gain about the sample's median (transformed space)
    shift_offset: float = 0.05     # SD of the per-channel offset, in transformed units (display range about 0-1)
    target_sensitivity: float = 0.0  # 0: Youden's J; else the threshold reaching this sensitivity
    pretrained: str = ""           # a local torchvision resnet34 state dict; "" for random init
    recompute_bn: bool = True      # BatchNorm statistics from each epoch's training images (rescue_gpu.nn.train)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.folds < 2 or self.max_epochs < 1 or self.patience < 1 or self.batch_size < 1:
            raise ConfigError("train needs folds >= 2, max_epochs >= 1, patience >= 1, batch_size >= 1")
        if not (0.0 <= self.target_sensitivity < 1.0) or self.learning_rate <= 0:
            raise ConfigError("train needs 0 <= target_sensitivity < 1 and learning_rate > 0")
        if self.shift_copies < 0 or not (0.0 <= self.shift_gain <= 1.0) or not (0.0 <= self.shift_offset <= 0.5):
            raise ConfigError(f"train needs shift_copies >= 0, 0 <= shift_gain <= 1 and 0 <= shift_offset <= 0.5 "
                              f"(got {self.shift_copies}, {self.shift_gain}, {self.shift_offset})")
        if self.shift_copies and self.shift_gain == 0.0 and self.shift_offset == 0.0:
            raise ConfigError("train.shift_copies > 0 needs shift_gain or shift_offset > 0 (else the copies equal "
                              "the sample); set one, or shift_copies = 0")


@dataclass(frozen=True)
class ModelSpec:
    """The network: torchvision ResNet-34 backbone plus :class:`HeadSpec`."""

    architecture: Literal["resnet34"] = "resnet34"
    head: HeadSpec = HeadSpec()
    train: TrainSpec = TrainSpec()


@dataclass(frozen=True)
class Pipeline:
    """One assay's science: panel, preprocessing, reference, raster and model."""

    name: str = "unnamed"
    description: str = ""
    panel: PanelSpec = PanelSpec()
    preprocess: PreprocessSpec = PreprocessSpec()
    reference: ReferenceSpec = ReferenceSpec()
    raster: RasterSpec = RasterSpec()
    model: ModelSpec = ModelSpec()
    source: str | None = None

    def __post_init__(self) -> None:
        named = set(self.panel.markers) | set(self.panel.scatter)
        unknown = sorted(set(self.preprocess.normalize.targets) - named) if self.panel.markers else []
        if unknown:
            raise ConfigError(f"preprocess.normalize.targets names {', '.join(map(repr, unknown))}, not a panel "
                              f"marker or scatter channel ({', '.join(sorted(named))})")


_WALLTIME = re.compile(r"^(\d+-)?\d{1,4}:[0-5]\d:[0-5]\d$")


@dataclass(frozen=True)
class SlurmConfig:
    """Workers as SLURM jobs (``[cluster.slurm]``; ``--slurm-*`` options): one Dask worker job each.

    Attributes
    ----------
    partition, account
        ``sbatch -p`` and ``-A`` ("": the site's default).
    workers
        Jobs to submit (each one worker process, or ``workers_per_gpu`` on a GPU job).
    cores, memory
        CPUs (``--cpus-per-task``) and memory (``--mem``, a size like ``"16GB"``) of each job.
    gpus_per_worker
        GPUs of each job (``--gres=gpu:N``): 0 for CPU workers or 1; a run uses one GPU
        per worker process, so for N GPUs submit N jobs (``workers``).
    walltime
        ``sbatch -t``: ``HH:MM:SS`` or ``D-HH:MM:SS``.
    python
        The Python that runs ``distributed.cli.dask_worker`` in the job ("": this one).
    prologue
        Shell lines before the worker starts (``module load ...``, ``source .venv/bin/activate``).
    directives
        More ``#SBATCH`` options, e.g. ``["--constraint=a100", "--qos=long"]``.
    log_directory
        Where the jobs write their output ("": the submission directory).
    start_timeout
        Seconds to wait for the first worker job to start and connect.
    """

    partition: str = ""
    account: str = ""
    workers: int = 1
    cores: int = 1
    memory: str = "8GB"
    gpus_per_worker: int = 0
    walltime: str = "01:00:00"
    python: str = ""
    prologue: tuple[str, ...] = ()
    directives: tuple[str, ...] = ()
    log_directory: str = ""
    start_timeout: float = 600.0

    def __post_init__(self) -> None:
        if self.workers < 1 or self.cores < 1:
            raise ConfigError(f"slurm workers and cores must be >= 1 (got workers={self.workers}, cores={self.cores})")
        if self.gpus_per_worker not in (0, 1):
            raise ConfigError(f"slurm gpus_per_worker must be 0 or 1 (got {self.gpus_per_worker}): a worker process "
                              "uses one GPU; for N GPUs set workers = N (one GPU job each)")
        if not _WALLTIME.match(self.walltime):
            raise ConfigError(f"slurm walltime must be HH:MM:SS or D-HH:MM:SS (got {self.walltime!r})")
        if self.memory.strip().lower() == "auto" or parse_memory(self.memory, total=0) <= 0:
            raise ConfigError(f"slurm memory must be a size like '16GB' (got {self.memory!r})")
        if self.start_timeout <= 0:
            raise ConfigError(f"slurm start_timeout must be > 0 seconds (got {self.start_timeout})")


@dataclass(frozen=True)
class ClusterConfig:
    """Where a run's Dask workers come from (``[cluster]`` in config.toml; ``--cluster`` and its options).

    Attributes
    ----------
    kind
        ``"local"``: an embedded cluster on this machine (one worker per visible GPU,
        else CPU processes); ``"slurm"``: SLURM jobs (:class:`SlurmConfig`). An existing
        scheduler (``--scheduler``) overrides both.
    workers_per_gpu
        Samples in flight per GPU: task slots (threads) of each GPU worker of an
        embedded cluster, worker processes of each SLURM GPU job.
    host
        The address the scheduler (and, when it is a loopback address, the workers)
        listen on. ``127.0.0.1`` keeps everything on this machine; for SLURM jobs on other
        nodes give this node's address that they can reach.
    slurm
        The SLURM jobs (``kind = "slurm"``).
    """

    kind: Literal["local", "slurm"] = "local"
    workers_per_gpu: int = 1
    host: str = "127.0.0.1"
    slurm: SlurmConfig = field(default_factory=lambda: SlurmConfig())

    def __post_init__(self) -> None:
        if self.workers_per_gpu < 1:
            raise ConfigError(f"workers_per_gpu must be >= 1 (got {self.workers_per_gpu})")
        if not self.host.strip() or "://" in self.host or any(c.isspace() for c in self.host):
            raise ConfigError(f"cluster host must be an address like 127.0.0.1 (got {self.host!r})")
        if self.kind == "slurm" and self.slurm.gpus_per_worker == 0 and self.workers_per_gpu > 1:
            raise ConfigError("workers_per_gpu > 1 needs GPU jobs: set slurm gpus_per_worker = 1 "
                              "(or raise slurm cores for more CPU threads per worker)")


@dataclass(frozen=True)
class RuntimeConfig:
    """How and where to run: backend, workers, memory, chunking, batches.

    Attributes
    ----------
    backend
        ``"auto"`` (a GPU when there is one, with a warning when not), ``"cpu"`` or ``"gpu"``.
    workers, threads_per_worker, memory_limit
        The embedded Dask cluster: workers (``"auto"`` or a number), threads and memory
        (``"auto"``, a fraction, a size) per worker.
    chunk_events
        Events per chunk of the flow projection's neighbour search (bounds memory; the
        results do not depend on it).
    batch_size
        Images (flow) or cells per inference batch.
    progress
        Show a progress bar while scoring (on a terminal).
    cluster
        Where the workers come from: ``[cluster]`` (:class:`ClusterConfig`).
    source
        The file this was read from (None: defaults).
    """

    backend: Literal["auto", "cpu", "gpu"] = "auto"
    workers: str = "auto"
    threads_per_worker: int = 1
    memory_limit: str = "auto"
    chunk_events: int = 262144
    batch_size: int = 64
    progress: bool = True
    cluster: ClusterConfig = field(default_factory=lambda: ClusterConfig())
    source: str | None = None

    def __post_init__(self) -> None:
        if self.workers != "auto" and not (self.workers.isdigit() and int(self.workers) > 0):
            raise ConfigError(f"workers must be 'auto' or a positive integer (got {self.workers!r})")
        for name in ("threads_per_worker", "chunk_events", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1 (got {getattr(self, name)})")
        parse_memory(self.memory_limit, total=1)  # validates the form


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B)?\s*$", re.IGNORECASE)
_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_memory(value: str | int | float, *, total: int) -> int:
    """Parse a memory size: ``"auto"`` (all of ``total``), a fraction ``"0.8"``, or ``"24GB"``.

    Returns bytes. Raises :class:`ConfigError` for anything else.
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise ConfigError(f"memory size must be a string like 'auto', '0.8' or '24GB' (got {value!r})")
    if value.strip().lower() == "auto":
        return int(total)
    m = _SIZE.match(value)
    if not m:
        raise ConfigError(f"cannot parse memory size {value!r}; use 'auto', a fraction like '0.8', or '24GB'")
    number, unit = float(m.group(1)), (m.group(2) or "").upper()
    if not unit:
        if number <= 1.0:
            return int(number * total)
        return int(number)
    return int(number * _UNITS[unit])


# --------------------------------------------------------------------------- loading


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str, file: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and convert TOML types to it."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    where = f"{file}: key '{key}'"
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a table, got {type(value).__name__}")
        return from_mapping(tp, value, file=file, prefix=key)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where} must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key, file)
    if origin is tuple:
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be a list, got {type(value).__name__}")
        return tuple(_coerce(v, args[0], f"{key}[{i}]", file) for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a table, got {type(value).__name__}")
        return {str(k): _coerce(v, args[1], f"{key}.{k}", file) for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return value
    if tp is str and isinstance(value, (int, float)) and not isinstance(value, bool) and key.endswith(("workers", "memory_limit")):
        return str(value)
    if tp in (str, bool) and not isinstance(value, tp):
        raise ConfigError(f"{where} must be {_type_name(tp)}, got {value!r}")
    return value


def from_mapping(cls: type, data: dict[str, Any], *, file: str = "<config>", prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a parsed TOML table, rejecting unknown keys.

    Raises
    ------
    ConfigError
        A key is unknown, has the wrong type, or a value is out of range; the message
        names the key (dotted path) and the file.
    """
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.name != "source"}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else key
        if key not in names:
            raise ConfigError(f"{file}: unknown key '{dotted}'; known keys here: {', '.join(sorted(names))}")
        kwargs[key] = _coerce(value, hints[key], dotted, file)
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        raise ConfigError(f"{file}: in '{prefix or cls.__name__}': {exc}") from None


def read_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file; :class:`ConfigError` when it is missing or invalid."""
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None


def pipeline_path(name_or_path: str | Path) -> Path:
    """A pipeline file's path: ``name_or_path`` itself, or ``pipelines/<name>.toml`` for a bare name."""
    path = Path(name_or_path)
    return PIPELINES_DIR / f"{name_or_path}.toml" if not path.suffix and not path.exists() else path


def load_pipeline(name_or_path: str | Path = "aml-mrd") -> Pipeline:
    """Load a pipeline file by path, or by name from the package's ``pipelines/`` folder."""
    path = pipeline_path(name_or_path)
    data = read_toml(path)
    pipe = from_mapping(Pipeline, data, file=str(path))
    return dataclasses.replace(pipe, source=str(path))


def pipeline_record(pipeline: Pipeline) -> dict[str, Any]:
    """The whole validated pipeline as a JSON-ready record (every key, defaults filled in; no ``source``).

    :func:`pipeline_from_record` turns it back into an equal :class:`Pipeline`; references
    store it so later commands can take their pipeline from the reference.
    """
    record = dataclasses.asdict(pipeline)
    record.pop("source", None)
    return record


def pipeline_from_record(record: dict[str, Any], *, file: str = "<stored pipeline>") -> Pipeline:
    """A :class:`Pipeline` from :func:`pipeline_record`'s output, validated like a pipeline file.

    Raises
    ------
    ConfigError
        A key is unknown, has the wrong type, or a value is out of range (the message
        names the key and ``file``).
    """
    if not isinstance(record, dict):
        raise ConfigError(f"{file}: a stored pipeline must be a table, got {type(record).__name__}")
    return dataclasses.replace(from_mapping(Pipeline, record, file=file), source=file)


def load_runtime(path: str | Path | None = None, *, cluster: dict[str, Any] | None = None,
                 **overrides: Any) -> RuntimeConfig:
    """Load ``config.toml`` (its ``[runtime]`` and ``[cluster]`` tables) and apply CLI overrides (None ignored).

    ``cluster`` holds overrides of ``[cluster]`` (``{"kind": "slurm", "slurm": {"workers": 4}}``).
    """
    data: dict[str, Any] = {}
    file = "<defaults>"
    cluster_data: dict[str, Any] = {}
    if path is not None:
        file = str(path)
        raw = read_toml(Path(path))
        unknown = set(raw) - {"runtime", "cluster"}
        if unknown:
            raise ConfigError(f"{file}: unknown table(s) {sorted(unknown)}; only [runtime] and [cluster] are read")
        data = dict(raw.get("runtime", {}))
        if "cluster" in data:
            raise ConfigError(f"{file}: 'cluster' is a table of its own: write [cluster], not runtime.cluster")
        cluster_data = dict(raw.get("cluster", {}))
        if not isinstance(cluster_data.get("slurm", {}), dict):
            raise ConfigError(f"{file}: key 'cluster.slurm' must be a table ([cluster.slurm])")
    data.update({k: v for k, v in overrides.items() if v is not None})
    for key, value in (cluster or {}).items():
        if key == "slurm":
            cluster_data["slurm"] = {**cluster_data.get("slurm", {}), **{k: v for k, v in value.items() if v is not None}}
        elif value is not None:
            cluster_data[key] = value
    cfg = from_mapping(RuntimeConfig, data, file=file, prefix="runtime")
    if cluster_data:
        cfg = dataclasses.replace(cfg, cluster=from_mapping(ClusterConfig, cluster_data, file=file, prefix="cluster"))
    return dataclasses.replace(cfg, source=None if path is None else str(path))
