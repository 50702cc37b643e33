"""ONNX export of a :class:`WeightsRecord` and an onnxruntime engine.

Export: :func:`export_onnx` writes one input ``images`` ``(N, C, S, S)`` float32 and one
output ``logits`` ``(N,)``, batch axis dynamic by default, and stores the model's
sha256, image size, channels, temperature and threshold as ONNX metadata. With torch
2.14 offline both exporters work here; the dynamo exporter has no operator
implementations below opset 18 (it warns, fails to down-convert ResNet-34 and keeps
opset 18), so ``exporter="auto"`` uses the TorchScript ("legacy", ``dynamo=False``)
exporter for ``opset < 18`` and the dynamo exporter otherwise, falling back to the
other one if the first raises.

The CPU execution provider is verified here; the CUDA execution provider is chosen on
a GPU when onnxruntime offers it (unverified on our machines). Inputs are copied to
host memory (cupy and CUDA tensors included).
"""

from __future__ import annotations

import copy
import json
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import BackendError, ModelError
from ..nn.record import WeightsRecord
from ._common import TorchFeatures, batches, check_images, output_dims, to_numpy_images

__all__ = ["export_onnx", "OnnxEngine", "INPUT_NAME", "OUTPUT_NAME"]

INPUT_NAME, OUTPUT_NAME = "images", "logits"


def _export(model: torch.nn.Module, x: torch.Tensor, path: Path, *, opset: int, dynamic_batch: bool, dynamo: bool) -> None:
    kwargs: dict[str, Any] = {"input_names": [INPUT_NAME], "output_names": [OUTPUT_NAME], "opset_version": opset}
    if dynamic_batch and dynamo:
        kwargs["dynamic_shapes"] = {"x": {0: torch.export.Dim("batch", min=1, max=65536)}}
    elif dynamic_batch:
        kwargs["dynamic_axes"] = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(path), dynamo=dynamo, **kwargs)


def _add_metadata(path: Path, record: WeightsRecord) -> None:
    import onnx

    proto = onnx.load(str(path))
    props = {"rescue.sha256": record.sha256, "rescue.in_channels": str(record.in_channels),
             "rescue.image_size": str(record.image_size), "rescue.temperature": repr(record.temperature)}
    for name in ("threshold", "reference_fingerprint", "classes", "leukaemic", "channels"):  # MRD or cell model
        if hasattr(record, name):
            value = getattr(record, name)
            props[f"rescue.{name}"] = value if isinstance(value, str) else json.dumps(value)
    onnx.helper.set_model_props(proto, props)
    onnx.save(proto, str(path))


def export_onnx(record: WeightsRecord, path: str | Path, *, opset: int = 17, dynamic_batch: bool = True,
                exporter: str = "auto") -> Path:
    """Export the record's network (fp32, eval mode, CPU) to an ONNX file.

    Parameters
    ----------
    record
        The model to export; its own module is not modified.
    path
        The ``.onnx`` file to write (parent folders are created).
    opset
        ONNX opset (17 by default: TensorRT 8.6+ and onnxruntime 1.14+ read it).
    dynamic_batch
        Leave the batch axis free; otherwise it is fixed at 1.
    exporter
        ``"auto"``, ``"legacy"`` (``dynamo=False``) or ``"dynamo"``.

    Raises
    ------
    ModelError
        Both exporters failed (the last error is included).
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    model = copy.deepcopy(record.model).float().cpu().eval()
    x = torch.zeros((2 if dynamic_batch else 1, record.in_channels, record.image_size, record.image_size))
    order = {"legacy": [False], "dynamo": [True], "auto": [opset >= 18, opset < 18]}.get(exporter)
    if order is None:
        raise ModelError(f"unknown exporter {exporter!r}; choose 'auto', 'legacy' or 'dynamo'")
    errors = []
    for dynamo in order:
        try:
            _export(model, x, out, opset=opset, dynamic_batch=dynamic_batch, dynamo=dynamo)
            _add_metadata(out, record)
            return out
        except Exception as exc:  # exporters raise many kinds
            errors.append(f"{'dynamo' if dynamo else 'legacy'}: {exc.__class__.__name__}: {str(exc)[:300]}")
    raise ModelError(f"ONNX export to {out} failed: " + " | ".join(errors))


def _providers(device: torch.device) -> list[str]:
    import onnxruntime as ort

    if device.type == "cpu":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise BackendError("kind='onnx' on a GPU needs onnxruntime-gpu (CUDAExecutionProvider is not available); "
                           "install onnxruntime-gpu or use device='cpu'")
    return [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]


class OnnxEngine:
    """onnxruntime inference of an exported record (fp32).

    Parameters
    ----------
    record
        The model (exported to a temporary file unless ``onnx_path`` is given).
    device
        A resolved :class:`torch.device` choosing the execution provider.
    batch_size
        Images per ``session.run``.
    onnx_path
        An existing export of this record to use instead of exporting.
    intra_op_threads
        onnxruntime's intra-op thread count (0: its default, one per core).
    """

    def __init__(self, record: WeightsRecord, *, device: torch.device, batch_size: int = 64,
                 onnx_path: str | Path | None = None, intra_op_threads: int = 0) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendError(f"kind='onnx' needs onnxruntime ({exc}); pip install onnxruntime") from None
        self.record, self.device, self.batch_size, self.precision = record, device, int(batch_size), "fp32"
        self.name = f"onnxruntime-{device.type}"
        self._features = TorchFeatures(record, device=device, batch_size=self.batch_size)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(intra_op_threads)
        kw: dict[str, Any] = {"providers": _providers(device), "sess_options": opts}
        if onnx_path is None:
            with tempfile.TemporaryDirectory() as tmp:
                self.session = ort.InferenceSession(str(export_onnx(record, Path(tmp) / "model.onnx")), **kw)
        else:
            self.session = ort.InferenceSession(str(onnx_path), **kw)

    def logits(self, images: Any) -> np.ndarray:
        """Raw logits (float64, before temperature) of ``(N, C, H, W)`` images."""
        x = to_numpy_images(images)
        check_images(x.shape, in_channels=self.record.in_channels, image_size=self.record.image_size)
        dims = output_dims(self.record)
        outs = [self.session.run([OUTPUT_NAME], {INPUT_NAME: x[sl]})[0].reshape(-1, *dims)
                for sl in batches(len(x), self.batch_size)]
        return np.concatenate(outs).astype(np.float64) if outs else np.zeros((0, *dims), dtype=np.float64)

    def logits_and_features(self, images: Any) -> tuple[np.ndarray, np.ndarray]:
        """Raw logits as :meth:`logits` and float32 ``(N, F)`` pooled features (from the record's torch network)."""
        return self.logits(images), self._features(images)

    def predict(self, images: Any) -> np.ndarray:
        """Calibrated probabilities (temperature applied), float64 ``(N,)`` or ``(N, K)``."""
        return self.record.probabilities(self.logits(images))
