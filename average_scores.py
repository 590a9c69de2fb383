"""Ensemble score files written by test.py (e.g. the 8- and 16-frame models).

    python average_scores.py                       # score/'s files (of one evaluation group)
    python average_scores.py --dataset synthetic   # those of one dataset
    python average_scores.py a.npz b.npz --weights 1 0.5 --softmax
    python average_scores.py a.npz b.npz --coeff 1,0.5      # test.py's spelling

Without files, the folder's score files must be of one evaluation group (same dataset, list,
classes and videos); a folder holding several is refused with the groups listed. Score files
of an unlabelled list (label -1) are ensembled without accuracy (--csv_file writes the
predictions). A file holding NaN or inf scores is refused, and so are weights that are not
finite, sum to zero or (without --allow_negative_weights) are negative.
"""
import argparse
import glob
import os

from ops.cli import HelpFormatter, exit_on_user_error
from ops.files import atomic_write, prepare_output
from ops.scores import (
    DEFAULT_SCORE_DIR,
    ScoreFileError,
    check_same_videos,
    check_weights,
    describe_group,
    describe_labels,
    ensemble,
    evaluation_group,
    load_scores,
    summarize,
)


class FloatList(argparse.Action):
    """Floats given space- and / or comma-separated (``1 0.5``, ``1,0.5``), as one list."""

    def __call__(self, parser, namespace, values, option_string=None):
        try:
            floats = [float(v) for text in values for v in text.split(',') if v]
        except ValueError as exc:
            raise argparse.ArgumentError(self, f'not a list of numbers: {exc}') from None
        if not floats:
            raise argparse.ArgumentError(self, 'expected at least one number')
        setattr(namespace, self.dest, floats)


def build_parser():
    parser = argparse.ArgumentParser(
        formatter_class=HelpFormatter,
        description='Average the class scores of several score files.')
    parser.add_argument('files', nargs='*',
                        help=f'npz score files (default: the one evaluation group in '
                             f'{DEFAULT_SCORE_DIR}/)')
    parser.add_argument('--score_dir', default=DEFAULT_SCORE_DIR, help='folder used without files')
    parser.add_argument('--dataset', default=None,
                        help="without files: only the score files of this dataset (its name, "
                             "or a .json dataset's file stem)")
    parser.add_argument('--weights', '--ensemble_weights', '--coeff', dest='weights', nargs='+',
                        action=FloatList, default=None,
                        help='ensemble weights, one per file, space- or comma-separated (test.py '
                             'spells them --coeff 1,0.5); finite, not summing to zero')
    parser.add_argument('--allow_negative_weights', action='store_true',
                        help='accept negative --weights (default: refuse them)')
    parser.add_argument('--softmax', action='store_true', help='softmax each file before averaging')
    parser.add_argument('--csv_file', default=None,
                        help="write the ensemble's 'video_id;predicted class' lines")
    return parser


def of_dataset(path, data, dataset):
    """Whether a score file is of `dataset` (files without the record: by their name)."""
    if 'dataset' in data:
        return str(data['dataset']) == dataset
    return os.path.basename(path).startswith(dataset + '_')


def folder_files(score_dir, dataset):
    """(paths, loaded) of the score files in `score_dir`, of one evaluation group."""
    paths = sorted(glob.glob(os.path.join(score_dir, '*.npz')))
    if not paths:
        raise ScoreFileError(f"no score file given and none in '{score_dir}/' (run test.py first)")
    loaded = [load_scores(p) for p in paths]
    if dataset is not None:
        kept = [(p, d) for p, d in zip(paths, loaded) if of_dataset(p, d, dataset)]
        if not kept:
            raise ScoreFileError(f"no score file of dataset '{dataset}' in '{score_dir}/'")
        paths, loaded = (list(x) for x in zip(*kept))
    groups = {}
    for path, data in zip(paths, loaded):
        groups.setdefault(evaluation_group(data), []).append(os.path.basename(path))
    if len(groups) > 1:
        listed = '; '.join(f"[{describe_group(g)}: {', '.join(names)}]"
                           for g, names in groups.items())
        raise ScoreFileError(f"'{score_dir}/' holds score files of {len(groups)} evaluation "
                             f"groups, which cannot be averaged together: {listed}; pass the "
                             f"files to average, or --dataset NAME")
    return paths, loaded


def write_predictions(path, scores, data):
    """'video_id;class' lines of `scores` (N, C); without ids the row number, without class
    names the class index."""
    ids = data['video_ids'] if data['video_ids'] is not None else range(len(scores))
    names = data.get('categories')
    with atomic_write(path, 'w') as f:
        for video_id, pred in zip(ids, scores.argmax(axis=1)):
            f.write(f'{video_id};{names[pred] if names is not None else pred}\n')


def line(name, width, result):
    if result is None:
        return f'{name.ljust(width)}  (no labelled video: no accuracy)'
    top1, top5, mean_class = result
    return f'{name.ljust(width)}  {top1:6.2f}  {top5:6.2f}  {mean_class:6.2f}'


@exit_on_user_error
def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.csv_file:
        prepare_output(args.csv_file, '--csv_file')
    if args.weights is not None:
        check_weights(args.weights, '--weights', args.allow_negative_weights)
    if args.files:
        files = args.files
        score_sets = [load_scores(f) for f in files]
    else:
        files, score_sets = folder_files(args.score_dir, args.dataset)
    check_same_videos(score_sets, files)
    labels = score_sets[0]['labels']
    width = max(len(os.path.basename(f)) for f in files + ['ensemble'])
    print(f"{'file'.ljust(width)}  top-1   top-5   mean class acc   ({len(labels)} videos)")
    note = describe_labels(labels)
    if note:
        print(note)
    for path, data in zip(files, score_sets):
        print(line(os.path.basename(path), width, summarize(data['scores'], labels)))
    combined = ensemble([d['scores'] for d in score_sets], args.weights, args.softmax)
    result = summarize(combined, labels)
    print(line('ensemble', width, result))
    if args.csv_file:
        write_predictions(args.csv_file, combined, score_sets[0])
        print(f'predictions written to {args.csv_file}')
    return combined, result


if __name__ == '__main__':
    main()
