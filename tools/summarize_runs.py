"""How much does a recipe vary over seeds? Mean ± standard deviation of top-1 over several runs.

    python tools/summarize_runs.py experiments/synthetic/TSM/resnet10/num_segments_8/ablation_seed*
    python tools/summarize_runs.py score/ablation/seed*/*.npz --by_type --json outputs/seeds.json

Each PATH is a run folder of main.py (its ``log/log.txt``: the validation top-1 of the last
evaluated epoch, ``last_val``, and the best one main.py reports, ``best_val``: chosen on the
same videos, so an optimistic number) or a score file of test.py (``top1`` and ``mean_class``
over its labelled videos). Per metric: n, mean, sample standard deviation (ddof 1; none for a
single run), min, max and their spread (max - min). The runs form one group, or one per model
type with --by_type (the run's args.json, the score file's record or name).
"""
import argparse
import json
import os
import re

import numpy as np

from ops.cli import HelpFormatter, exit_on_user_error
from ops.errors import UserError
from ops.files import atomic_write, prepare_output
from ops.scores import load_scores, summarize

# main.py's line after each evaluated epoch (ops/run_train.py)
VAL_LINE = re.compile(r'Epoch (\d+) val: .*?Prec@1 ([-\d.]+) .*\(best Prec@1 ([-\d.]+)\)')


def spread(values):
    """{'n', 'mean', 'std' (sample, None for one value), 'min', 'max', 'spread'} of `values`."""
    values = np.asarray(values, dtype=np.float64)
    return {'n': len(values), 'mean': float(values.mean()),
            'std': float(values.std(ddof=1)) if len(values) > 1 else None,
            'min': float(values.min()), 'max': float(values.max()),
            'spread': float(values.max() - values.min())}


def mean_std(summary, digits=1):
    """'mean ± std' of a spread() summary ('mean' alone for a single run)."""
    if summary['std'] is None:
        return f"{summary['mean']:.{digits}f}"
    return f"{summary['mean']:.{digits}f} ± {summary['std']:.{digits}f}"


def run_folder_metrics(folder):
    """(model type, {'last_val', 'best_val', 'epoch'}) of a main.py run folder, from the last
    validation line of its log."""
    log = os.path.join(folder, 'log', 'log.txt')
    if not os.path.isfile(log):
        raise UserError(f"'{folder}' is neither a score file nor a run folder (no log/log.txt)")
    with open(log, errors='replace') as f:
        found = [m for m in map(VAL_LINE.search, f) if m]
    if not found:
        raise UserError(f"run folder '{folder}': no validation line in log/log.txt (no epoch "
                        f"evaluated yet; see --eval-freq)")
    epoch, last, best = found[-1].groups()
    temporal_type = None
    args_file = os.path.join(folder, 'log', 'args.json')
    if os.path.isfile(args_file):
        with open(args_file) as f:
            temporal_type = json.load(f).get('type')
    return temporal_type, {'last_val': float(last), 'best_val': float(best),
                           'epoch': int(epoch)}


def score_file_metrics(path):
    """(model type, {'top1', 'mean_class'}) of a score file over its labelled videos."""
    data = load_scores(path)
    result = summarize(data['scores'], data['labels'])
    if result is None:
        raise UserError(f"score file '{path}' holds no labelled video: no accuracy to summarise")
    top1, _, mean_class = result
    if 'temporal_type' in data:
        temporal_type = str(data['temporal_type'])
    else:  # <dataset>_<type>_<arch>_...: the name test.py gives it
        parts = os.path.basename(path).split('_')
        temporal_type = parts[1] if len(parts) > 2 else None
    return temporal_type, {'top1': top1, 'mean_class': mean_class}


def summarize_runs(paths, by_type=False):
    """{group: {'runs': [{'path', 'type', metric: value}], metric: spread()}} of `paths`
    (run folders or score files)."""
    groups = {}
    for path in paths:
        if os.path.isdir(path):
            temporal_type, metrics = run_folder_metrics(path)
            metrics.pop('epoch')
        else:
            temporal_type, metrics = score_file_metrics(path)
        group = (temporal_type or 'unknown') if by_type else 'all'
        groups.setdefault(group, {'runs': []})['runs'].append(
            {'path': path, 'type': temporal_type, **metrics})
    for group in groups.values():
        names = dict.fromkeys(k for run in group['runs'] for k in run
                              if k not in ('path', 'type'))
        for name in names:
            group[name] = spread([run[name] for run in group['runs'] if name in run])
    return groups


def table(groups):
    """Markdown table: a row per group and metric."""
    rows = ['| runs | metric | n | mean ± std | min | max | spread |',
            '|' + ' --- |' * 7]
    for group, summary in groups.items():
        for name, values in summary.items():
            if name != 'runs':
                rows.append(f"| {group} | {name} | {values['n']} | {mean_std(values, 2)} | "
                            f"{values['min']:.2f} | {values['max']:.2f} | "
                            f"{values['spread']:.2f} |")
    return '\n'.join(rows)


def build_parser():
    parser = argparse.ArgumentParser(formatter_class=HelpFormatter,
                                     description=__doc__.splitlines()[0])
    parser.add_argument('paths', nargs='+', help='run folders of main.py or score files')
    parser.add_argument('--by_type', action='store_true',
                        help='a group per model type (default: all runs in one group)')
    parser.add_argument('--json', default=None, help='also write the summary as JSON')
    return parser


@exit_on_user_error
def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.json:
        prepare_output(args.json, '--json')
    groups = summarize_runs(args.paths, args.by_type)
    print(table(groups))
    if args.json:
        with atomic_write(args.json, 'w') as f:
            json.dump(groups, f, indent=1)
        print(f'summary written to {args.json}')
    return groups


if __name__ == '__main__':
    main()
