"""Training curves of one or more runs from their TensorBoard event files.

    python tools/plot_curves.py experiments/synthetic/MASNet/resnet10/num_segments_8/demo \
                                --out imgs/training_curves.png
"""
import argparse
import os

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

from ops.cli import HelpFormatter
from ops.logs import read_scalars

PANELS = (('loss', ('loss/train', 'loss/test')), ('top-1 (%)', ('acc/train_top1', 'acc/test_top1')),
          ('learning rate', ('lr',)))


def plot(run_dirs, out, labels=None):
    fig, axes = plt.subplots(1, len(PANELS), figsize=(4.2 * len(PANELS), 3.3))
    for k, run in enumerate(run_dirs):
        scalars = read_scalars(os.path.join(run, 'tensorboardX'))
        if not scalars:
            raise SystemExit("plot_curves.py: error: no TensorBoard events in "
                             f"'{run}/tensorboardX'")
        name = labels[k] if labels else os.path.basename(os.path.normpath(run))
        for ax, (title, tags) in zip(axes, PANELS):
            for tag in tags:
                if tag in scalars:
                    steps, values = zip(*scalars[tag])
                    style = '--' if 'test' in tag else '-'
                    ax.plot(steps, values, style, color=f'C{k}', marker='.',
                            label=f'{name} {tag.split("/")[-1]}')
            ax.set_title(title)
            ax.set_xlabel('epoch')
            ax.grid(alpha=0.3)
    for ax in axes[:2]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(formatter_class=HelpFormatter,
                                     description=__doc__.splitlines()[0])
    parser.add_argument('runs', nargs='+', help='run folders (holding tensorboardX/)')
    parser.add_argument('--labels', '--legend', dest='labels', nargs='+', default=None,
                        help='legend names of the runs, in order (default: the run folders)')
    parser.add_argument('--out', default=os.path.join('outputs', 'training_curves.png'),
                        help='figure to write (`make figures`: imgs/training_curves.png)')
    args = parser.parse_args(argv)
    plot(args.runs, args.out, args.labels)
    print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
