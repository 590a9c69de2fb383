"""Is model A really better than model B? A paired comparison of two score files of the same
videos (test.py writes them).

    python tools/compare_scores.py A.npz B.npz --json outputs/cmp.json --csv outputs/cmp.csv

On the labelled videos both files share it prints and writes (--json):

    n            the labelled videos compared
    top1_a/_b    top-1 of each file (percent)
    difference   top1_a - top1_b (percentage points)
    ci95         [low, high]: the 95% paired bootstrap interval of the difference: --bootstrap
                 resamples of the videos with replacement (seeded by --seed), the same resample
                 for both files, the 2.5th and 97.5th percentiles (numpy's linear interpolation)
    a_only/b_only  the videos only A / only B gets right (the discordant pairs)
    mcnemar_p    McNemar's exact two-sided test: the binomial probability (p = 1/2) of a split
                 of the a_only + b_only videos at least as uneven as the one seen
    classes_gain / classes_loss  the classes where A gets most videos more / fewer right than B,
                 with their video counts

--csv writes the videos one file gets right and the other wrong (video, label, both
predictions, which is right). Files of different videos are refused, as in average_scores.py.
"""
import argparse
import csv
import io
import json
import os
from fractions import Fraction

import numpy as np

from ops.cli import HelpFormatter, exit_on_user_error
from ops.files import atomic_write, prepare_output
from ops.scores import UNLABELLED, ScoreFileError, check_same_videos, load_scores
from opts import int_at_least

CHUNK_VALUES = 2 ** 22  # resampled indices held at once (resamples x videos)


def mcnemar_exact(a_only: int, b_only: int) -> float:
    """Two-sided exact McNemar p-value: twice the binomial(a_only + b_only, 1/2) tail at the
    smaller count, at most 1 (1 when no video is discordant)."""
    m, k = a_only + b_only, min(a_only, b_only)
    tail, term = 0, 1  # term: comb(m, i), exact integers
    for i in range(k + 1):
        tail += term
        term = term * (m - i) // (i + 1)
    return float(min(Fraction(1), Fraction(2 * tail, 2 ** m)))


def bootstrap_indices(n: int, resamples: int, seed: int):
    """The resamples of the videos, as (rows, n) index arrays in chunks (seeded)."""
    rng = np.random.default_rng(seed)
    rows = max(1, CHUNK_VALUES // max(n, 1))
    for start in range(0, resamples, rows):
        yield rng.integers(0, n, size=(min(rows, resamples - start), n))


def paired_bootstrap(right_a, right_b, resamples: int = 10000, seed: int = 0):
    """[low, high] 95% percentile interval of top1_a - top1_b (points) over paired resamples."""
    gained = right_a.astype(np.float64) - right_b.astype(np.float64)  # +1, 0 or -1 per video
    differences = np.concatenate([gained[idx].mean(axis=1) * 100.0
                                  for idx in bootstrap_indices(len(gained), resamples, seed)])
    low, high = np.percentile(differences, [2.5, 97.5])
    return [float(low), float(high)]


def class_changes(labels, right_a, right_b, categories, count=5):
    """(gains, losses): the `count` classes where A gets most videos more (fewer) right than B;
    each {'class', 'name', 'videos', 'right_a', 'right_b', 'difference'}."""
    rows = []
    for c in np.unique(labels):
        mask = labels == c
        a, b = int(right_a[mask].sum()), int(right_b[mask].sum())
        rows.append({'class': int(c), 'name': str(categories[c]) if categories is not None
                     else str(c), 'videos': int(mask.sum()), 'right_a': a, 'right_b': b,
                     'difference': a - b})
    gains = sorted((r for r in rows if r['difference'] > 0), key=lambda r: -r['difference'])
    losses = sorted((r for r in rows if r['difference'] < 0), key=lambda r: r['difference'])
    return gains[:count], losses[:count]


def compare(data_a, data_b, resamples=10000, seed=0):
    """The comparison of the module docstring for two loaded score files of the same videos;
    also 'disagreements': [(video, label, prediction_a, prediction_b, 'A' or 'B')]."""
    labels = np.asarray(data_a['labels'])
    known = labels != UNLABELLED
    if not known.any():
        raise ScoreFileError('the score files hold no labelled video: nothing to compare')
    ids = (np.asarray(data_a['video_ids'], dtype=str) if data_a['video_ids'] is not None
           else np.arange(len(labels)).astype(str))[known]
    labels = labels[known]
    pred_a = data_a['scores'][known].argmax(axis=1)
    pred_b = data_b['scores'][known].argmax(axis=1)
    right_a, right_b = pred_a == labels, pred_b == labels
    a_only, b_only = int((right_a & ~right_b).sum()), int((right_b & ~right_a).sum())
    top1_a, top1_b = (100.0 * int(r.sum()) / len(labels) for r in (right_a, right_b))
    gains, losses = class_changes(labels, right_a, right_b, data_a.get('categories'))
    names = data_a.get('categories')
    disagreements = [(v, names[y] if names is not None else int(y),
                      names[p] if names is not None else int(p),
                      names[q] if names is not None else int(q), 'A' if ra else 'B')
                     for v, y, p, q, ra, rb in zip(ids, labels, pred_a, pred_b, right_a, right_b)
                     if ra != rb]
    return {'n': int(known.sum()), 'top1_a': float(top1_a), 'top1_b': float(top1_b),
            'difference': float(top1_a - top1_b),
            'ci95': paired_bootstrap(right_a, right_b, resamples, seed),
            'bootstrap': resamples, 'seed': seed, 'a_only': a_only, 'b_only': b_only,
            'mcnemar_p': mcnemar_exact(a_only, b_only), 'classes_gain': gains,
            'classes_loss': losses, 'disagreements': disagreements}


def report(result, name_a, name_b):
    """The printed summary of a comparison."""
    low, high = result['ci95']
    lines = [f"A {name_a}: top-1 {result['top1_a']:.2f}",
             f"B {name_b}: top-1 {result['top1_b']:.2f}",
             f"A - B: {result['difference']:+.2f} points, 95% paired bootstrap interval "
             f"[{low:+.2f}, {high:+.2f}] ({result['bootstrap']} resamples, seed {result['seed']}) "
             f"over {result['n']} videos",
             f"only A right: {result['a_only']} videos, only B right: {result['b_only']}; "
             f"McNemar exact p = {result['mcnemar_p']:.4g}"]
    for title, rows in (('A gains most', result['classes_gain']),
                        ('A loses most', result['classes_loss'])):
        listed = ', '.join(f"{r['name']} ({r['difference']:+d} of {r['videos']})" for r in rows)
        lines.append(f'{title}: {listed or "none"}')
    return '\n'.join(lines)


def write_csv(path, disagreements):
    text = io.StringIO()
    writer = csv.writer(text, lineterminator='\n')
    writer.writerow(['video', 'label', 'prediction_a', 'prediction_b', 'right'])
    writer.writerows(disagreements)
    with atomic_write(path, 'w') as f:
        f.write(text.getvalue())


def build_parser():
    parser = argparse.ArgumentParser(formatter_class=HelpFormatter,
                                     description=__doc__.splitlines()[0])
    parser.add_argument('file_a', help='score file of model A (npz)')
    parser.add_argument('file_b', help='score file of model B, of the same videos')
    parser.add_argument('--json', default=None, help='write the comparison as JSON')
    parser.add_argument('--csv', default=None,
                        help='write the videos one model gets right and the other wrong')
    parser.add_argument('--bootstrap', type=int_at_least(1), default=10000,
                        help='paired bootstrap resamples (default: %(default)s)')
    parser.add_argument('--seed', type=int, default=0,
                        help='seed of the resamples (default: %(default)s)')
    return parser


@exit_on_user_error
def main(argv=None):
    args = build_parser().parse_args(argv)
    for path, flag in ((args.json, '--json'), (args.csv, '--csv')):
        if path:
            prepare_output(path, flag)
    score_sets = [load_scores(args.file_a), load_scores(args.file_b)]
    check_same_videos(score_sets, [args.file_a, args.file_b])
    result = compare(*score_sets, resamples=args.bootstrap, seed=args.seed)
    print(report(result, os.path.basename(args.file_a), os.path.basename(args.file_b)))
    disagreements = result.pop('disagreements')
    if args.json:
        with atomic_write(args.json, 'w') as f:
            json.dump({'file_a': args.file_a, 'file_b': args.file_b, **result}, f, indent=1)
        print(f'comparison written to {args.json}')
    if args.csv:
        write_csv(args.csv, disagreements)
        print(f'{len(disagreements)} videos where the two disagree on being right written to '
              f'{args.csv}')
    return result


if __name__ == '__main__':
    main()
