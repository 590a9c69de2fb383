"""Memory traffic of MAS-ResNet-50 against the plain ResNet-50, and its predicted GPU cost.

    python tools/memory_traffic.py                       # the tables of docs/memory_traffic.md
    python tools/memory_traffic.py --gpu H100 --dtype bf16 --clips 8
    python tools/memory_traffic.py --check               # formulas against torch.profiler

Per block: the MB the plain block moves, what MAS-Net's conv biases and its MAM -> MSM -> TIM
chain add (eager as implemented, and fused), and the chain's full-size passes; then the
network's totals and, per GPU and dtype, the predicted MAS / plain time ratio (a roofline with
a host cost per eager operator; tools/traffic.py states the model). Markdown on stdout.
"""
import argparse
import json

from ops.cli import HelpFormatter
from ops.files import atomic_write
from tools.traffic import (
    DTYPE_BYTES,
    GPUS,
    HOST_US,
    block_rows,
    full_passes,
    network_ops,
    predict,
    profile_mas_block,
    traffic,
)

MODES = (('inference', False), ('training', True))


def block_table(clips, segments, size, dtype):
    lines = []
    for mode, train in MODES:
        lines += [f'\n{mode} ({"forward + backward" if train else "forward"}), {clips} clip(s) '
                  f'x {segments} x {size}px, {dtype}: MB per block, and the MAS chain\'s '
                  f'full-size (N*T, C, H, W) passes (reads + writes)\n',
                  '| block | C | H x W | plain | + conv biases | + MAS eager | MAS fused '
                  '| eager passes | fused passes |', '|' + '---|' * 9]
        for row in block_rows(clips, segments, size, train, dtype):
            (er, ew), (fr, fw) = row['eager_passes'], row['fused_passes']
            lines.append(f'| {row["block"]} | {row["channels"]} | {row["size"]} | '
                         f'{row["plain_mb"]:.1f} | {row["bias_mb"]:.1f} | {row["eager_mb"]:.1f} '
                         f'| {row["fused_mb"]:.1f} | {er:g} + {ew:g} | {fr:g} + {fw:g} |')
    return lines


def totals_table(clips, segments, size, dtype):
    lines = [f'\nwhole network, {clips} clip(s) x {segments} x {size}px, {dtype}\n',
             '| mode | network | GB moved | GFLOPs | operators |', '|' + '---|' * 5]
    for mode, train in MODES:
        for name, masnet, variant, bias in (('plain ResNet-50', False, 'eager', True),
                                            ('MAS-ResNet-50 eager', True, 'eager', True),
                                            ('MAS-ResNet-50 fused', True, 'fused', False)):
            ops = [o for _, section in network_ops(masnet, clips, segments, size, train,
                                                   variant, conv_bias=bias) for o in section]
            moved, flops, count = traffic(ops, dtype)
            lines.append(f'| {mode} | {name} | {moved / 1e9:.2f} | {flops / 1e9:.1f} | {count} |')
    return lines


def prediction_table(gpus, dtypes, clips_list, segments, size, host_us):
    lines = [f'\npredicted MAS-ResNet-50 / ResNet-50 time, {segments} x {size}px; roofline: '
             f'sum of max(FLOPs / peak, bytes / bandwidth); eager: with {host_us:g} us of host '
             f'time per operator\n',
             '| GPU | dtype | clips | mode | plain ms (eager) | MAS eager: roofline | eager '
             '| MAS fused: roofline | fused |', '|' + '---|' * 9]
    results = []
    for gpu in gpus:
        for dtype in dtypes:
            for clips in clips_list:
                for mode, train in MODES:
                    r = predict(gpu, dtype, clips, segments, size, train, host_us)
                    results.append(r)
                    lines.append(
                        f'| {gpu} | {dtype} | {clips} | {mode} | '
                        f'{r["plain"]["seconds"] * 1e3:.2f} | '
                        f'{r["eager_roofline_ratio"]:.2f}x | {r["eager_ratio"]:.2f}x | '
                        f'{r["fused_roofline_ratio"]:.2f}x | {r["fused_ratio"]:.2f}x |')
    return lines, results


def check_lines():
    """The MAS chain's full-size passes and operators, formula against torch.profiler."""
    lines = ['\nprofiler check: one MAS block\'s chain, 2 clips x 8 x (64, 8, 8), CPU\n',
             '| mode | operators: formula / profiler | full-size reads + writes: formula '
             '| profiler | all elements: formula / profiler |', '|' + '---|' * 5]
    for mode, train in MODES:
        formula, profiled, full = profile_mas_block(train=train)
        (fr, fw), (pr, pw) = full_passes(formula, full, 8), full_passes(profiled, full, 8)
        elements = sum(o.elements() for o in formula) / sum(o.elements() for o in profiled)
        lines.append(f'| {mode} | {len(formula)} / {len(profiled)} | {fr:g} + {fw:g} | '
                     f'{pr:g} + {pw:g} | {elements:.4f} |')
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(formatter_class=HelpFormatter,
                                     description=__doc__.splitlines()[0])
    parser.add_argument('--clips', type=int, nargs='+', default=[1, 8],
                        help='clips per batch (the first one for the per-block tables)')
    parser.add_argument('--segments', type=int, default=8)
    parser.add_argument('--size', type=int, default=224)
    parser.add_argument('--gpu', nargs='+', default=list(GPUS), choices=GPUS)
    parser.add_argument('--dtype', nargs='+', default=['bf16', 'fp32'], choices=DTYPE_BYTES,
                        help='activation dtype (fp16 / bf16: autocast)')
    parser.add_argument('--host_us', type=float, default=HOST_US,
                        help='host time per eager operator, us')
    parser.add_argument('--no_blocks', action='store_true', help='leave out the block tables')
    parser.add_argument('--check', action='store_true',
                        help='also check the formulas against torch.profiler (CPU, seconds)')
    parser.add_argument('--json', default=None, help='also write the predictions to this file')
    args = parser.parse_args(argv)
    lines = []
    if not args.no_blocks:
        lines += block_table(args.clips[0], args.segments, args.size, args.dtype[0])
        lines += totals_table(args.clips[0], args.segments, args.size, args.dtype[0])
    table, results = prediction_table(args.gpu, args.dtype, args.clips, args.segments,
                                      args.size, args.host_us)
    lines += table
    if args.check:
        lines += check_lines()
    print('\n'.join(lines).lstrip('\n'))
    if args.json:
        with atomic_write(args.json, 'w') as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == '__main__':
    main()
