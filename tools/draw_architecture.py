"""Draw the README's architecture figures with matplotlib.

    python tools/draw_architecture.py --out imgs      # imgs/MAS-Net.png, imgs/Module.png
"""
import argparse
import os

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

from ops.cli import HelpFormatter

COLOURS = {'conv': '#cfe2f3', 'mam': '#f4cccc', 'msm': '#fff2cc', 'tim': '#d9ead3',
           'data': '#eeeeee', 'op': '#ffffff', 'head': '#e6d5f0'}


def box(ax, x, y, w, h, text, kind='conv', size=9, bold=False):
    """A rounded box centred at (x, y); returns its edge points for arrows."""
    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h,
                                boxstyle='round,pad=0.02,rounding_size=0.08',
                                facecolor=COLOURS[kind], edgecolor='#444444', linewidth=1))
    ax.text(x, y, text, ha='center', va='center', fontsize=size,
            fontweight='bold' if bold else 'normal')
    return {'left': (x - w / 2, y), 'right': (x + w / 2, y), 'top': (x, y + h / 2),
            'bottom': (x, y - h / 2)}


def arrow(ax, start, end, text=None, colour='#333333', style='-|>', offset=(0, 0.12), size=7.5):
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle=style, mutation_scale=11, color=colour,
                                 linewidth=1.1, shrinkA=1, shrinkB=1))
    if text:
        ax.text((start[0] + end[0]) / 2 + offset[0], (start[1] + end[1]) / 2 + offset[1], text,
                ha='center', va='bottom', fontsize=size, color='#333333')


def canvas(width, height):
    fig, ax = plt.subplots(figsize=(width, height))
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    ax.axis('off')
    return fig, ax


def draw_overview(path):
    fig, ax = canvas(13, 6.2)
    ax.text(6.5, 5.9, 'MAS-Net: TSN-style sampling, MAS bottlenecks in every ResNet block, '
            'average consensus', ha='center', fontsize=12, fontweight='bold')
    # sampling
    v = box(ax, 1.0, 4.4, 1.5, 0.9, 'video\n(n frames)', 'data')
    s = box(ax, 3.0, 4.4, 1.7, 0.9, 'T segments\n1 frame each', 'data')
    arrow(ax, v['right'], s['left'])
    stem = box(ax, 5.3, 4.4, 2.0, 0.9, 'stem\nconv 7x7/2, maxpool', 'conv')
    arrow(ax, s['right'], stem['left'], '(N*T, 3, 224, 224)', offset=(0, 0.5))
    prev = stem
    for i, (blocks, width) in enumerate(zip((3, 4, 6, 3), (256, 512, 1024, 2048))):
        b = box(ax, 7.4 + i * 1.3, 4.4, 1.1, 0.9, f'layer{i + 1}\n{blocks} x MAS\n{width} ch',
                'mam', 8)
        arrow(ax, prev['right'], b['left'])
        prev = b
    gap = box(ax, 12.55, 4.4, 0.8, 0.9, 'GAP\nfc', 'head', 8)
    arrow(ax, prev['right'], gap['left'])
    cons = box(ax, 12.3, 2.9, 1.3, 0.8, 'average\nover T', 'head', 8)
    arrow(ax, gap['bottom'], cons['top'], '(N*T, K)', offset=(0.45, -0.1))
    out = box(ax, 12.3, 1.6, 1.3, 0.7, 'class scores\n(N, K)', 'data', 8)
    arrow(ax, cons['bottom'], out['top'])

    # the MAS bottleneck
    ax.add_patch(FancyBboxPatch((0.3, 0.35), 10.6, 2.65,
                                boxstyle='round,pad=0.02,rounding_size=0.1',
                                facecolor='none', edgecolor='#999999', linestyle='--'))
    ax.text(0.5, 2.75, 'MAS bottleneck (every block of layer1-4)', fontsize=10, fontweight='bold')
    x0 = box(ax, 1.0, 1.5, 1.0, 0.7, 'x\n(N*T,4C,H,W)', 'data', 7.5)
    c1 = box(ax, 2.4, 1.5, 1.1, 0.7, 'conv 1x1\nBN, ReLU', 'conv', 8)
    arrow(ax, x0['right'], c1['left'])
    mam = box(ax, 3.9, 2.0, 1.0, 0.55, 'MAM', 'mam', 9, True)
    msm = box(ax, 5.3, 1.5, 1.0, 0.7, 'MSM', 'msm', 9, True)
    tim = box(ax, 6.6, 1.5, 0.9, 0.7, 'TIM', 'tim', 9, True)
    arrow(ax, c1['right'], (mam['left'][0], mam['left'][1]))
    arrow(ax, mam['right'], (msm['top'][0] - 0.2, msm['top'][1]), 'motion', offset=(0.15, 0.02))
    arrow(ax, c1['right'], msm['left'], 'appearance', offset=(-0.1, -0.42))
    arrow(ax, msm['right'], tim['left'])
    c2 = box(ax, 8.0, 1.5, 1.1, 0.7, 'conv 3x3\nBN, ReLU', 'conv', 8)
    arrow(ax, tim['right'], c2['left'])
    c3 = box(ax, 9.4, 1.5, 1.0, 0.7, 'conv 1x1\nBN', 'conv', 8)
    arrow(ax, c2['right'], c3['left'])
    add = box(ax, 10.45, 1.5, 0.5, 0.5, '+', 'op', 12)
    arrow(ax, c3['right'], add['left'])
    ax.plot([1.0, 1.0, 10.45], [x0['bottom'][1], 0.75, 0.75], color='#777777', linewidth=1)
    arrow(ax, (10.45, 0.75), add['bottom'], colour='#777777')
    ax.text(5.7, 0.8, 'identity / downsample (1x1 conv + BN)', fontsize=7.5, color='#555555',
            ha='center', va='bottom')
    fig.savefig(path, dpi=110, bbox_inches='tight')
    plt.close(fig)


def draw_modules(path):
    fig, ax = canvas(12, 7.4)
    # MAM
    ax.text(0.3, 7.0, 'MAM: Motion Accumulation Module', fontsize=11, fontweight='bold')
    a = box(ax, 1.2, 6.0, 1.6, 0.7, 'F (N*T, C, H, W)', 'data', 8)
    r = box(ax, 3.3, 6.0, 1.6, 0.7, 'conv 1x1, BN\nC -> C/64', 'conv', 8)
    arrow(ax, a['right'], r['left'])
    acc = box(ax, 6.6, 6.0, 3.6, 0.8, 'a[t] = (b[t] + 0.5 b[t+1]) / 1.5\na[T-1] = b[T-1]',
              'mam', 8.5)
    arrow(ax, r['right'], acc['left'], 'b (N, T, C/64, H, W)', offset=(0, 0.45))
    p = box(ax, 9.7, 6.0, 1.6, 0.7, 'conv 1x1\nC/64 -> C', 'conv', 8)
    arrow(ax, acc['right'], p['left'])
    m = box(ax, 11.3, 6.0, 1.0, 0.7, 'motion\nM', 'data', 8)
    arrow(ax, p['right'], m['left'])

    # MSM
    ax.text(0.3, 4.9, 'MSM: Motion Selection Module (per clip, channel and position)', fontsize=11,
            fontweight='bold')
    mi = box(ax, 1.0, 4.2, 1.2, 0.55, 'M (motion)', 'data', 8)
    ai = box(ax, 1.0, 3.3, 1.2, 0.55, 'F (appearance)', 'data', 8)
    tp = box(ax, 3.0, 3.75, 1.7, 0.8, 'mean over T\nof M + mean of F', 'msm', 8)
    arrow(ax, mi['right'], tp['left'])
    arrow(ax, ai['right'], tp['left'])
    f1 = box(ax, 5.2, 3.75, 1.9, 0.8, 'conv 3x3, g=4\nC -> C/4, BN, ReLU', 'conv', 8)
    arrow(ax, tp['right'], f1['left'], '(N, C, H, W)', offset=(0, 0.42))
    f2 = box(ax, 7.4, 3.75, 1.7, 0.8, 'conv 3x3, g=4\nC/4 -> 2C', 'conv', 8)
    arrow(ax, f1['right'], f2['left'])
    sm = box(ax, 9.3, 3.75, 1.4, 0.8, 'softmax over\n2 branches', 'msm', 8)
    arrow(ax, f2['right'], sm['left'])
    out = box(ax, 11.1, 3.75, 1.5, 0.8, 'w_m * M\n+ w_a * F', 'data', 8)
    arrow(ax, sm['right'], out['left'], 'w_m, w_a', offset=(0, 0.42))

    # TIM
    ax.text(0.3, 2.3, 'TIM: Temporal Interaction Module', fontsize=11, fontweight='bold')
    ti = box(ax, 1.5, 1.3, 2.2, 0.8, 'MSM output\n(N*T, C, H, W)', 'data', 8)
    dw = box(ax, 5.2, 1.3, 4.0, 0.9,
             'depthwise temporal conv, kernel 3\nweight (C, 1, 3), zero padding', 'tim', 8.5)
    arrow(ax, ti['right'], dw['left'])
    init = box(ax, 9.9, 1.3, 3.3, 1.1, 'initialised as TSM shift:\nC/8 channels take t+1,\n'
               'C/8 take t-1, rest keep t', 'op', 8)
    arrow(ax, dw['right'], init['left'], style='-')
    fig.savefig(path, dpi=110, bbox_inches='tight')
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(formatter_class=HelpFormatter,
                                     description=__doc__.splitlines()[0])
    parser.add_argument('--out', default='outputs',
                        help='folder of MAS-Net.png and Module.png (`make figures`: imgs)')
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    draw_overview(os.path.join(args.out, 'MAS-Net.png'))
    draw_modules(os.path.join(args.out, 'Module.png'))
    print(f'wrote {args.out}/MAS-Net.png and {args.out}/Module.png')


if __name__ == '__main__':
    main()
