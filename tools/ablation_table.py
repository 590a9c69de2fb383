"""Markdown table of the synthetic ablation from test.py score files (TSN vs TSM vs MAS-Net).

    python tools/ablation_table.py score/ablation/*.npz

Per file: top-1 over the 8 classes, and for each pair of time-reversed classes the
accuracy of telling its two classes apart (argmax over the pair's two scores, on the pair's
videos). A model without temporal modelling sits at 50% on every pair.
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ops.evaluation import load_scores, summarize  # noqa: E402

# the synthetic classes 2k and 2k+1 are each other played backwards (ops/synthetic.py)
PAIRS = [(0, 1), (2, 3), (4, 5), (6, 7)]
PAIR_NAMES = ['left/right', 'down/up', 'grow/shrink', 'cw/ccw']


def pair_accuracy(scores, labels, pair):
    """Accuracy of choosing between the two classes of `pair`, on that pair's videos (%)."""
    mask = np.isin(labels, pair)
    chosen = np.where(scores[mask][:, pair[0]] >= scores[mask][:, pair[1]], pair[0], pair[1])
    return float((chosen == labels[mask]).mean() * 100)


def table(paths):
    rows = ['| model | top-1 (8 classes) | ' + ' | '.join(PAIR_NAMES) + ' |',
            '|' + ' --- |' * (2 + len(PAIRS))]
    for path in paths:
        data = load_scores(path)
        scores, labels = data['scores'], data['labels']
        top1, _, _ = summarize(scores, labels)
        name = os.path.basename(path).split('_')[1]
        pairs = ' | '.join(f'{pair_accuracy(scores, labels, p):.1f}' for p in PAIRS)
        rows.append(f'| {name} | {top1:.1f} | {pairs} |')
    return '\n'.join(rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('files', nargs='+')
    args = parser.parse_args(argv)
    print(table(args.files))


if __name__ == '__main__':
    main()
