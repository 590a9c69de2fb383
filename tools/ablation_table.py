"""Markdown table of the synthetic ablation from test.py score files (TSN vs TSM vs MAS-Net).

    python tools/ablation_table.py score/ablation/seed*/*.npz

Per score file: top-1 over the 8 classes, and for each pair of time-reversed classes the
accuracy of telling its two classes apart (argmax over the pair's two scores, on the pair's
videos); a model without temporal modelling sits at 50% on every pair. Files of the same model
type (several seeds) are averaged: mean +- sample standard deviation. Rows follow the registry
of temporal types (ops/temporal.py) backwards, baselines first, the paper's model last; a type
it does not know comes after them. Mean +- std as
tools/summarize_runs.py summarises any runs (the mean alone for a single run).
"""
import argparse
import os

import numpy as np

from ops.cli import HelpFormatter
from ops.scores import load_scores, summarize
from ops.temporal import temporal_types
from tools.summarize_runs import mean_std, spread

# the synthetic classes 2k and 2k+1 are each other played backwards (ops/synthetic.py)
PAIRS = [(0, 1), (2, 3), (4, 5), (6, 7)]
PAIR_NAMES = ['left/right', 'down/up', 'grow/shrink', 'cw/ccw']


def pair_accuracy(scores, labels, pair):
    """Accuracy of choosing between the two classes of `pair`, on that pair's videos (%)."""
    mask = np.isin(labels, pair)
    chosen = np.where(scores[mask][:, pair[0]] >= scores[mask][:, pair[1]], pair[0], pair[1])
    return float((chosen == labels[mask]).mean() * 100)


def file_metrics(path):
    """(model type, [top-1, accuracy of each pair]) of one score file, in %."""
    data = load_scores(path)
    scores, labels = data['scores'], data['labels']
    top1, _, _ = summarize(scores, labels)
    temporal_type = os.path.basename(path).split('_')[1]  # <dataset>_<type>_<arch>_...
    return temporal_type, [top1] + [pair_accuracy(scores, labels, p) for p in PAIRS]


def table(paths):
    """One row per model type: mean +- sample std over its score files (e.g. seeds)."""
    runs = {}
    for path in paths:
        temporal_type, metrics = file_metrics(path)
        runs.setdefault(temporal_type, []).append(metrics)
    rows = ['| model | runs | top-1 (8 classes) | ' + ' | '.join(PAIR_NAMES) + ' |',
            '|' + ' --- |' * (3 + len(PAIRS))]
    order = temporal_types()[::-1]  # the registry lists the paper's model first
    for temporal_type in sorted(runs, key=lambda t: order.index(t) if t in order else len(order)):
        values = np.array(runs[temporal_type])  # (runs, metrics)
        cells = ' | '.join(mean_std(spread(column)) for column in values.T)
        rows.append(f'| {temporal_type} | {len(values)} | {cells} |')
    return '\n'.join(rows)


def main(argv=None):
    parser = argparse.ArgumentParser(formatter_class=HelpFormatter,
                                     description=__doc__.splitlines()[0])
    parser.add_argument('files', nargs='+')
    args = parser.parse_args(argv)
    print(table(args.files))


if __name__ == '__main__':
    main()
