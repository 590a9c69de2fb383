"""onnxruntime (CPU) latency of an exported MAS-Net beside eager PyTorch, in one process.

    python tools/bench_export.py                          # ResNet-50 MAS-Net, 1 x 8 x 3 x 224 x 224
    python tools/bench_export.py --type TSM --threads 4 --rounds 10

The model (random weights, eval mode) is exported to ONNX in a temporary folder, the parity
check of tools/export.py runs first, then the eager model (autograd off: MAS-Net's in-place
path) and the onnxruntime session (same thread count) are timed in interleaved rounds; the
medians and their ratio are printed. A benchmark, not a test.
"""
import argparse
import os
import statistics
import tempfile
import time

import torch

from archs import ARCHS
from ops.cli import HelpFormatter
from ops.export import example_input, export_and_check
from ops.models import build_model
from ops.temporal import temporal_types


def timed(fn, x):
    start = time.perf_counter()
    fn(x)
    return time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(formatter_class=HelpFormatter,
                                     description=__doc__.splitlines()[0])
    parser.add_argument('--type', default='MASNet', choices=temporal_types())
    parser.add_argument('--arch', default='resnet50', choices=ARCHS)
    parser.add_argument('--num_segments', default=8, type=int)
    parser.add_argument('--size', default=224, type=int)
    parser.add_argument('--threads', default=torch.get_num_threads(), type=int)
    parser.add_argument('--rounds', default=5, type=int)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    import onnxruntime
    torch.manual_seed(0)
    model = build_model(174, args.num_segments, args.type, args.arch, pretrain='none',
                        input_size=args.size).eval()
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        prefix = os.path.join(tmp, 'model')
        diffs = export_and_check(model, prefix, formats=('onnx',))['onnx']
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = args.threads
        session = onnxruntime.InferenceSession(prefix + '.onnx', options,
                                               providers=['CPUExecutionProvider'])
        x = example_input(model)  # (1, T, 3, H, W)
        runners = {'eager PyTorch': model,
                   'onnxruntime': lambda t: session.run(None, {'frames': t.numpy()})}
        for run in runners.values():  # warm-up
            run(x)
        times = {name: [] for name in runners}
        for _ in range(args.rounds):
            for name, run in runners.items():
                times[name].append(timed(run, x))
    print(f'{args.type} {args.arch}, input 1x{args.num_segments}x3x{args.size}x{args.size}, '
          f'{args.threads} CPU thread(s), torch {torch.__version__}, onnxruntime '
          f'{onnxruntime.__version__}; parity: max |onnx - eager| = {max(diffs.values()):.1e}')
    medians = {name: statistics.median(t) * 1000 for name, t in times.items()}
    for name, ms in medians.items():
        print(f'  {name:14s} {ms:8.1f} ms per clip (median of {args.rounds})')
    print(f'  onnxruntime / eager: {medians["onnxruntime"] / medians["eager PyTorch"]:.2f}')


if __name__ == '__main__':
    main()
