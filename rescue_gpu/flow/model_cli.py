"""The ``rescue model`` sub-commands: ``import``, ``export-onnx``, ``upgrade`` and ``site-threshold``.

Wire them in with :func:`register` (``register(app)`` adds a ``model`` sub-app).
Errors are raised as :class:`~rescue_gpu.errors.RescueError` subclasses, which the
``rescue`` entry point turns into a message and exit code 2.

Head specifications (``--head``) take one of two forms:

* a pipeline TOML path (anything ending in ``.toml``, or an existing file): its
  ``[model.head]`` table is used, e.g. ``--head pipelines/aml-mrd.toml``;
* an inline spec of ``key=value`` pairs separated by ``;``, e.g.
  ``hidden=256,128;dropout=0.3;activation=relu``. ``hidden`` is a comma list of widths
  (``hidden=`` for a single linear layer); omitted keys take :class:`HeadSpec`'s defaults.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ..config import HeadSpec
from ..errors import ConfigError

__all__ = ["register", "model_app", "parse_head_spec"]

model_app = typer.Typer(no_args_is_help=True, help="Import, export and check trained models.")


def _inline_head(text: str) -> HeadSpec:
    kwargs: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        key, sep, value = (s.strip() for s in part.partition("="))
        if not sep or key not in ("hidden", "dropout", "activation"):
            raise ConfigError(f"--head: cannot read {part!r}; use e.g. 'hidden=256,128;dropout=0.3;activation=relu' "
                              "or a pipeline TOML path")
        try:
            if key == "hidden":
                kwargs[key] = tuple(int(w) for w in value.split(",") if w.strip())
            elif key == "dropout":
                kwargs[key] = float(value)
            else:
                kwargs[key] = value
        except ValueError:
            raise ConfigError(f"--head: {key}={value!r} is not a valid value") from None
    if kwargs.get("activation", "relu") not in ("relu", "gelu", "silu"):
        raise ConfigError(f"--head: activation must be relu, gelu or silu (got {kwargs['activation']!r})")
    return HeadSpec(**kwargs)


def parse_head_spec(text: str) -> HeadSpec:
    """A :class:`HeadSpec` from an inline ``key=value;...`` spec or a pipeline TOML's ``[model.head]``.

    Raises
    ------
    ConfigError
        Unknown key, bad value, or an unreadable pipeline file.
    """
    if text.endswith(".toml") or (Path(text).is_file() and "=" not in text):
        from ..config import load_pipeline

        return load_pipeline(text).model.head
    return _inline_head(text)


@model_app.command("import")
def import_cmd(
    state_dict: Annotated[Path, typer.Argument(help="Flow network state dict (backbone.* and head.*): .safetensors or a torch.save file (read weights_only).")],
    head: Annotated[str, typer.Option("--head", help="'hidden=256;dropout=0.3;activation=relu' or a pipeline TOML path.")],
    reference: Annotated[Path, typer.Option("--reference", help="Reference directory the model was trained with.")],
    out: Annotated[Path, typer.Option("--out", help="Model directory to write (must not exist).")],
    threshold: Annotated[float, typer.Option("--threshold", help="Decision threshold on the probability.")] = 0.5,
) -> None:
    """Wrap externally trained weights as a checksummed model directory for REFERENCE."""
    from ..cliutil import console
    from .record import import_state_dict

    rec = import_state_dict(state_dict, head=parse_head_spec(head), reference=reference, out=out, threshold=threshold)
    console.print(f"wrote {out}: resnet34, {rec.in_channels} channel(s), {rec.image_size}x{rec.image_size}, "
                  f"head {list(rec.head.hidden)}, sha256 {rec.sha256[:16]}", markup=False, highlight=False)


@model_app.command("export-onnx")
def export_onnx_cmd(
    model_dir: Annotated[Path, typer.Argument(help="Model directory (weights.safetensors + model.json).")],
    out: Annotated[Path, typer.Option("--out", help="ONNX file to write.")],
    opset: Annotated[int, typer.Option("--opset", help="ONNX opset.")] = 17,
    static_batch: Annotated[bool, typer.Option("--static-batch", help="Fix the batch axis at 1.")] = False,
) -> None:
    """Export a model directory to ONNX (input 'images' N x C x S x S, output 'logits' N)."""
    from ..cliutil import console
    from ..engine.onnxrt import export_onnx
    from .record import ModelRecord

    rec = ModelRecord.load(model_dir)
    path = export_onnx(rec, out, opset=opset, dynamic_batch=not static_batch)
    console.print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, opset {opset}, sha256 {rec.sha256[:16]})",
                  markup=False, highlight=False)


@model_app.command("upgrade")
def upgrade_cmd(
    model_dir: Annotated[Path, typer.Argument(help="Model directory (MRD or cell model) written by an older rescue_gpu.")],
) -> None:
    """Protect an older model's threshold, temperature and other settings with a checksum (rewrites its model.json).

    Check the settings first: they are taken as they are now. A current model is left as it is.
    """
    import json

    from ..cliutil import console
    from ..errors import ModelError

    try:
        fmt = json.loads((model_dir / "model.json").read_text()).get("format")
    except (OSError, ValueError, AttributeError) as exc:
        raise ModelError(f"{model_dir / 'model.json'}: unreadable ({exc.__class__.__name__}: {exc})") from None
    if fmt == "rescue-cell-model":
        from ..cells.record import CellModelRecord as Record
    else:
        from .record import ModelRecord as Record  # type: ignore[assignment]
    rec = Record.upgrade(model_dir)
    console.print(f"{model_dir}: model.json is format version {rec.metadata()['format_version']}, "
                  f"checksum {rec.checksum[:16]}", markup=False, highlight=False)


@model_app.command("site-threshold")
def site_threshold_cmd(
    model_dir: Annotated[Path, typer.Argument(help="Trained MRD model directory (left unchanged).")],
    normals: Annotated[Path, typer.Option("--normals", help="'rescue score' run directory of this site's normal samples (controls, MRD-negative follow-ups), scored with MODEL_DIR.")],
    out: Annotated[Path, typer.Option("--out", help="Model directory to write: a copy with the site's threshold (must not exist).")],
    rate: Annotated[float, typer.Option("--rate", help="Share of the site's normals the new threshold may call positive.")] = 0.05,
) -> None:
    """Copy a model with its threshold re-set on this site's own normals (the lowest calling at most RATE positive).

    Only the threshold changes (the ranking, and so ROC AUC, cannot); the copy's provenance
    records the calibration. With fewer than 1/RATE normals none of them may be positive.
    """
    from ..cliutil import console
    from .site import site_calibrate

    if not 0.0 <= rate < 1.0:
        raise ConfigError(f"--rate must be in [0, 1) (got {rate})")
    _, s = site_calibrate(model_dir, normals, out, max_positive_rate=rate)
    console.print(f"wrote {out}: threshold {s['previous_threshold']:.4f} -> {s['threshold']:.4f} from {s['n_normals']} "
                  f"site normals ({s['positive_at_previous']} positive at the old threshold, {s['positive_at_new']} at "
                  f"the new; rate {rate:g}); score with --model {out}", markup=False, highlight=False)
    if rate > 0 and s["n_normals"] < round(1.0 / rate):
        console.print(f"warning: only {s['n_normals']} normals: at rate {rate:g} none of them may be positive, so "
                      f"the threshold sits just above the highest; {round(1.0 / rate)} or more give the rate a meaning",
                      markup=False, highlight=False)


def register(app: typer.Typer) -> None:
    """Add the ``model`` sub-app (``import``, ``export-onnx``, ``upgrade``, ``site-threshold``) to ``app``."""
    app.add_typer(model_app, name="model")
