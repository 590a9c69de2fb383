"""Parameters and GFLOPs of a model, counted by fvcore on one clip.

    python tools/flops.py --type MASNet --arch resnet50 --num_segments 8     # 33.5 G, 26.07 M

fvcore counts one multiply-add as one flop (so its "GFLOPs" are GMACs, as in the paper's
tables); convolutions, linear layers and BatchNorm are counted, elementwise ops are not.
MAS-Net is counted in the release's formulation (ops/reference.py: TIM as a depthwise Conv1d,
MSM's Conv3d), the one the paper's numbers count; ops/MASNet.py computes the same function
with other operations (TIM as adds, which fvcore would not count).
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from archs import ARCHS, TEMPORAL_TYPES  # noqa: E402
from ops.models import TemporalModel  # noqa: E402
from ops.reference import ReleaseStyleModel  # noqa: E402


def count(model_type='MASNet', arch='resnet50', num_segments=8, input_size=224, num_class=174):
    """(parameters, GFLOPs) of one clip of `num_segments` frames at `input_size` px."""
    from fvcore.nn import FlopCountAnalysis

    model = TemporalModel(num_class, num_segments, model_type, arch, pretrain='none',
                          input_size=input_size).eval()
    params = sum(p.numel() for p in model.parameters())
    clip = torch.zeros(1, num_segments * 3, input_size, input_size)
    counted = ReleaseStyleModel(model) if model_type == 'MASNet' else model
    analysis = FlopCountAnalysis(counted, clip)
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    with torch.no_grad():
        flops = analysis.total()
    return params, flops / 1e9


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--type', default='MASNet', choices=TEMPORAL_TYPES)
    parser.add_argument('--arch', default='resnet50', choices=ARCHS)
    parser.add_argument('--num_segments', type=int, default=8)
    parser.add_argument('--input_size', type=int, default=224)
    parser.add_argument('--num_class', type=int, default=174)
    args = parser.parse_args(argv)
    params, gflops = count(args.type, args.arch, args.num_segments, args.input_size, args.num_class)
    print(f'{args.type} {args.arch}, {args.num_segments} x {args.input_size}px, '
          f'{args.num_class} classes: {params / 1e6:.2f} M params, {gflops:.2f} GFLOPs '
          f'(fvcore, = GMACs)')
    return params, gflops


if __name__ == '__main__':
    main()
