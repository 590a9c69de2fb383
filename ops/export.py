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
"""
import logging
import warnings
from typing import Dict, Optional

import numpy as np
import torch

from ops.errors import UserError
from ops.utils import atomic_write

logger = logging.getLogger('masnet')

FORMATS = {'onnx': '.onnx', 'torchscript': '.pt'}
ONNX_OPSET = 17


class ParityError(UserError):
    """An exported model whose outputs differ from eager PyTorch beyond the tolerance."""


def example_input(model, batch: int = 1, size: Optional[int] = None,
                  seed: int = 0) -> torch.Tensor:
    """Random ``(batch, T, 3, size, size)`` input (size: the model's crop size)."""
    size = size or model.crop_size
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, model.num_segments, 3, size, size, generator=g)


def export_onnx(model, path: str, example: torch.Tensor) -> None:
    """Write the ONNX graph of `model` (eval mode, CPU) with a dynamic batch axis."""
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # the legacy exporter's deprecation / tracer notes
        with atomic_write(path) as f:
            torch.onnx.export(model, (example,), f, dynamo=False, opset_version=ONNX_OPSET,
                              input_names=['frames'], output_names=['scores'],
                              dynamic_axes={'frames': {0: 'batch'}, 'scores': {0: 'batch'}})


def export_torchscript(model, path: str, example: torch.Tensor) -> None:
    """Write the traced TorchScript module of `model` (eval mode, CPU)."""
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        traced = torch.jit.trace(model, example, check_trace=False)
    with atomic_write(path) as f:
        torch.jit.save(traced, f)


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


def export_and_check(model, prefix: str, formats=tuple(FORMATS), real: Optional[torch.Tensor] = None,
                     tolerance: float = 1e-4) -> Dict[str, Dict[str, float]]:
    """Export `model` to ``prefix + .onnx / .pt`` and check parity with eager PyTorch.

    real: a real clip ``(1, T, 3, H, W)`` to check besides random input (batch 2).
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
        (export_onnx if fmt == 'onnx' else export_torchscript)(model, path, example)
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
