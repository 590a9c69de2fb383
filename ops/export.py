"""Export a TemporalModel to ONNX / TorchScript and check the export against eager PyTorch.

The exported graph takes ``frames`` ``(N, T, 3, H, W)`` (normalised RGB, as the test transform
makes them; N is dynamic) and returns ``scores`` ``(N, num_class)``, the logits averaged over
the T frames. While exporting, MAS-Net takes its out-of-place path (ops/MASNet.py,
``recording_graph``); eager inference keeps its buffer-reusing one, and the parity check
compares the two: max |exported - eager| of the logits on random input (batch 2) and on a
real clip must stay within ``tolerance * max(1, max |eager logit|)``: float32 rounding grows
with the size of the values (a random-weight ResNet-50 at 224 px has logits up to 40 and
differs by 1.1e-4, i.e. 3e-6 of the scale), so the tolerance is absolute for logits up to 1
and relative beyond.

ONNX uses torch's TorchScript-based exporter (``dynamo=False``: no onnxscript needed) and is
run with onnxruntime; both are optional dependencies (requirements-export.txt).

An exported file describes itself (``export_metadata``): class names, mean/std, input, crop and
scale sizes, channel order (RGB), segments, type, arch and the axes of input and output, each
entry as JSON text, in the ONNX ``metadata_props`` and in the TorchScript extra file
``metadata.json``; ``read_export_metadata`` reads them back. ``preprocess_for_export`` is the
reference preprocessing, numpy only (a deployment can copy it): all frames of a video ->
the ``frames`` input predict.py gives the model (one clip, center crop).
"""
import io
import json
import logging
import warnings
from typing import Dict, Optional, Sequence

import numpy as np
import torch

from ops.errors import UserError
from ops.files import atomic_write

logger = logging.getLogger('masnet')

FORMATS = {'onnx': '.onnx', 'torchscript': '.pt'}
ONNX_OPSET = 17
INPUT_AXES = ('batch', 'segments', 'channels', 'height', 'width')
OUTPUT_AXES = ('batch', 'classes')
# the TorchScript extra file holding the metadata (JSON object of JSON texts, as in ONNX)
TORCHSCRIPT_METADATA = 'metadata.json'


class ParityError(UserError):
    """An exported model whose outputs differ from eager PyTorch beyond the tolerance."""


def example_input(model, batch: int = 1, size: Optional[int] = None,
                  seed: int = 0) -> torch.Tensor:
    """Random ``(batch, T, 3, size, size)`` input (size: the model's crop size)."""
    size = size or model.crop_size
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, model.num_segments, 3, size, size, generator=g)


def export_metadata(model, description: Dict) -> Dict[str, str]:
    """The metadata of an export of `model`: every entry of `description` (a checkpoint's
    ``ops.checkpoint.model_description``) plus the crop size, the input / output names and axes
    and what the output holds, each as JSON text (``{"categories": '["a", "b"]', ...}``)."""
    entries = dict(description, crop_size=model.crop_size, input_name='frames',
                   input_axes=list(INPUT_AXES), output_name='scores',
                   output_axes=list(OUTPUT_AXES),
                   output='logits averaged over the segments (softmax: class probabilities)')
    return {key: json.dumps(value) for key, value in entries.items()}


def read_export_metadata(fmt: str, path: str) -> Dict:
    """The metadata of an exported file, decoded (``{"categories": ["a", "b"], ...}``)."""
    if fmt == 'onnx':
        import onnx
        entries = {p.key: p.value for p in onnx.load(path, load_external_data=False).metadata_props}
    else:
        files = {TORCHSCRIPT_METADATA: ''}
        torch.jit.load(path, map_location='cpu', _extra_files=files)
        entries = json.loads(files[TORCHSCRIPT_METADATA] or '{}')
    return {key: json.loads(value) for key, value in entries.items()}


def export_onnx(model, path: str, example: torch.Tensor,
                metadata: Optional[Dict[str, str]] = None) -> None:
    """Write the ONNX graph of `model` (eval mode, CPU) with a dynamic batch axis, its axes
    named (dimension denotations) and `metadata` in its metadata_props."""
    import onnx
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # the legacy exporter's deprecation / tracer notes
        graph = io.BytesIO()
        torch.onnx.export(model, (example,), graph, dynamo=False, opset_version=ONNX_OPSET,
                          input_names=['frames'], output_names=['scores'],
                          dynamic_axes={'frames': {0: 'batch'}, 'scores': {0: 'batch'}})
    proto = onnx.load_from_string(graph.getvalue())
    for values, axes in ((proto.graph.input, INPUT_AXES), (proto.graph.output, OUTPUT_AXES)):
        for dim, axis in zip(values[0].type.tensor_type.shape.dim, axes):
            dim.denotation = axis
    for key, value in (metadata or {}).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    with atomic_write(path) as f:
        f.write(proto.SerializeToString())


def export_torchscript(model, path: str, example: torch.Tensor,
                       metadata: Optional[Dict[str, str]] = None) -> None:
    """Write the traced TorchScript module of `model` (eval mode, CPU), `metadata` in its extra
    file TORCHSCRIPT_METADATA."""
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        traced = torch.jit.trace(model, example, check_trace=False)
    with atomic_write(path) as f:
        torch.jit.save(traced, f, _extra_files={TORCHSCRIPT_METADATA: json.dumps(metadata or {})})


def resize_bilinear(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """PIL's bilinear resize (anti-aliased when shrinking) of an (h, w, 3) uint8 image, with
    numpy: a triangle filter whose support is one source pixel, times the scale factor when
    shrinking; horizontal pass, rounding to uint8, vertical pass (Pillow's order). The project's
    resize (ops.transforms.resize_group) agrees with it within one grey level."""
    def weights(source: int, target: int) -> np.ndarray:
        scale = source / target
        support = max(scale, 1.0)
        matrix = np.zeros((target, source))  # (target, source) filter taps
        for i in range(target):
            center = (i + 0.5) * scale
            lo = max(int(center - support + 0.5), 0)
            hi = min(int(center + support + 0.5), source)
            taps = np.maximum(0.0, 1.0 - np.abs((np.arange(lo, hi) - center + 0.5) / support))
            matrix[i, lo:hi] = taps / taps.sum()
        return matrix

    h, w = image.shape[:2]
    out = image.astype(np.float64)
    if w != width:
        out = np.einsum('xw,hwc->hxc', weights(w, width), out)  # (h, width, 3)
        out = np.clip(np.floor(out + 0.5), 0, 255)  # halves up, as Pillow
    if h != height:
        out = np.einsum('yh,hxc->yxc', weights(h, height), out)  # (height, width, 3)
        out = np.clip(np.floor(out + 0.5), 0, 255)  # halves up, as Pillow
    return out.astype(np.uint8)


def preprocess_for_export(frames: Sequence[np.ndarray], metadata: Dict) -> np.ndarray:
    """The ``frames`` input predict.py gives an exported model for one video (1 clip, center
    crop), with numpy alone.

    frames: every frame of the video in order, ``(H, W, 3)`` uint8 in the channel order of
        ``metadata['channel_order']`` (RGB: reverse the last axis of OpenCV's BGR frames).
    metadata: ``read_export_metadata`` of the exported file (num_segments, scale_size,
        crop_size, input_mean, input_std).
    Steps: T = num_segments frames, the middle one of each of T equal parts (1-based index
    ``int(n/T/2 + n/T*i) + 1``); short side resized to scale_size (``resize_bilinear``); the
    centered crop_size square; ``(x/255 - mean) / std`` per channel.
    Returns ``(1, T, 3, crop_size, crop_size)`` float32.
    """
    num_segments, scale, crop = (int(metadata[k]) for k in ('num_segments', 'scale_size',
                                                              'crop_size'))
    tick = len(frames) / num_segments
    picked = [frames[int(tick / 2.0 + tick * i)] for i in range(num_segments)]
    h, w = picked[0].shape[:2]
    width, height = (scale, int(scale * h / w)) if w <= h else (int(scale * w / h), scale)
    x, y = int(round((width - crop) / 2.0)), int(round((height - crop) / 2.0))
    clip = np.stack([resize_bilinear(f, width, height)[y:y + crop, x:x + crop]
                     for f in picked])  # (T, crop, crop, 3) uint8
    mean = np.asarray(metadata['input_mean'], np.float32)
    std = np.asarray(metadata['input_std'], np.float32)
    clip = (clip.astype(np.float32) / 255.0 - mean) / std
    return clip.transpose(0, 3, 1, 2)[None].astype(np.float32)  # (1, T, 3, crop, crop)


def load_runner(fmt: str, path: str):
    """A function ``(N, T, 3, H, W) tensor -> (N, num_class) numpy`` running the exported file."""
    if fmt == 'onnx':
        import onnxruntime
        session = onnxruntime.InferenceSession(path, providers=['CPUExecutionProvider'])
        return lambda x: session.run(None, {'frames': x.numpy()})[0]
    module = torch.jit.load(path, map_location='cpu').eval()

    def run(x):
        with torch.no_grad():
            return module(x).numpy()
    return run


def max_abs_diff(model, runner, inputs: Dict[str, torch.Tensor]) -> Dict[str, tuple]:
    """``{input name: (max |runner(x) - model(x)|, max |model(x)|)}``, the model run eagerly
    without autograd."""
    diffs = {}
    for name, x in inputs.items():
        with torch.no_grad():
            expected = model(x).numpy()
        diffs[name] = (float(np.abs(runner(x) - expected).max()), float(np.abs(expected).max()))
    return diffs


def export_and_check(model, prefix: str, formats=tuple(FORMATS),
                     real: Optional[torch.Tensor] = None, tolerance: float = 1e-4,
                     metadata: Optional[Dict[str, str]] = None) -> Dict[str, Dict[str, float]]:
    """Export `model` to ``prefix + .onnx / .pt`` and check parity with eager PyTorch.

    real: a real clip ``(1, T, 3, H, W)`` to check besides random input (batch 2).
    metadata: ``export_metadata``, written into both files.
    Returns ``{format: {input: max abs diff}}``; raises ParityError when a difference exceeds
    ``tolerance * max(1, max |eager logit|)``.
    """
    model = model.cpu().eval()
    example = example_input(model)
    inputs = {'random': example_input(model, batch=2, seed=1)}
    if real is not None:
        inputs['real'] = real
    results = {}
    for fmt in formats:
        path = prefix + FORMATS[fmt]
        (export_onnx if fmt == 'onnx' else export_torchscript)(model, path, example, metadata)
        results[fmt] = {}
        for name, (diff, scale) in max_abs_diff(model, load_runner(fmt, path), inputs).items():
            allowed = tolerance * max(1.0, scale)
            logger.info(f'{fmt} {path}: max |exported - eager| on {name} input = {diff:.2e} '
                        f'(max |logit| {scale:.3g}, allowed {allowed:.1e})')
            if not diff <= allowed:
                raise ParityError(f'{fmt} export {path} differs from eager PyTorch by {diff:.2e} '
                                  f'on {name} input > {allowed:.1e} (--tolerance {tolerance:g} '
                                  f'x max(1, max |logit| {scale:.3g}))')
            results[fmt][name] = diff
    return results
