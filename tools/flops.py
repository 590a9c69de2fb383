"""Parameters and GFLOPs of a model, counted by fvcore on one clip.

    python tools/flops.py --type MASNet --arch resnet50 --num_segments 8     # 33.5 G, 26.07 M

fvcore counts one multiply-add as one flop (so its "GFLOPs" are GMACs, as in the paper's
tables); convolutions, linear layers, matmuls and BatchNorm are counted, elementwise ops are
not. The real modules are counted; what a temporal module computes with elementwise ops but
the paper counts as a layer (TIM: a depthwise temporal conv run as adds) is added by that
module's handler in ops/temporal.py.
"""
import argparse

import torch

from archs import ARCHS
from ops.cli import HelpFormatter
from ops.models import build_model
from ops.temporal import temporal_module, temporal_types


def uncounted_macs(model, clip, handlers):
    """Multiply-adds of the modules with a handler, from one forward pass over `clip`."""
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        total += handlers[type(module)](module, tuple(inputs[0].shape))

    hooks = [m.register_forward_hook(hook) for m in model.modules() if type(m) in handlers]
    try:
        with torch.no_grad():
            model(clip)
    finally:
        for h in hooks:
            h.remove()
    return total


def count(temporal_type='MASNet', arch='resnet50', num_segments=8, input_size=224, num_class=174):
    """(parameters, GFLOPs) of one clip of `num_segments` frames at `input_size` px."""
    from fvcore.nn import FlopCountAnalysis

    model = build_model(num_class, num_segments, temporal_type, arch, pretrain='none',
                        input_size=input_size).eval()
    params = sum(p.numel() for p in model.parameters())
    clip = torch.zeros(1, num_segments * 3, input_size, input_size)
    analysis = FlopCountAnalysis(model, clip)
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    with torch.no_grad():
        flops = analysis.total()
    flops += uncounted_macs(model, clip, temporal_module(temporal_type).uncounted_macs)
    return params, flops / 1e9


def main(argv=None):
    parser = argparse.ArgumentParser(formatter_class=HelpFormatter,
                                     description=__doc__.splitlines()[0])
    parser.add_argument('--type', default='MASNet', choices=temporal_types())
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
