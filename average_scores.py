"""Ensemble score files written by test.py (e.g. the 8- and 16-frame models).

    python average_scores.py                       # every score file in score/
    python average_scores.py a.npz b.npz --weights 1 0.5 --softmax
"""
import argparse
import glob
import os

from ops.cli import HelpFormatter
from ops.evaluation import (DEFAULT_SCORE_DIR, ScoreFileError, check_same_videos, ensemble,
                            load_scores, summarize)
from ops.experiment import exit_on_user_error


def build_parser():
    parser = argparse.ArgumentParser(
        formatter_class=HelpFormatter,
        description='Average the class scores of several score files.')
    parser.add_argument('files', nargs='*', help=f'npz score files (default: all in {DEFAULT_SCORE_DIR}/)')
    parser.add_argument('--score_dir', default=DEFAULT_SCORE_DIR, help='folder used without files')
    parser.add_argument('--weights', nargs='+', type=float, default=None, help='one weight per file')
    parser.add_argument('--softmax', action='store_true', help='softmax each file before averaging')
    return parser


@exit_on_user_error
def main(argv=None):
    args = build_parser().parse_args(argv)
    files = args.files or sorted(glob.glob(os.path.join(args.score_dir, '*.npz')))
    if not files:
        raise ScoreFileError(f"no score file given and none in '{args.score_dir}/' "
                             f"(run test.py first)")
    score_sets = [load_scores(f) for f in files]
    check_same_videos(score_sets, files)
    labels = score_sets[0]['labels']
    width = max(len(os.path.basename(f)) for f in files + ['ensemble'])
    print(f"{'file'.ljust(width)}  top-1   top-5   mean class acc   ({len(labels)} videos)")
    for path, data in zip(files, score_sets):
        top1, top5, mean_class = summarize(data['scores'], labels)
        print(f'{os.path.basename(path).ljust(width)}  {top1:6.2f}  {top5:6.2f}  {mean_class:6.2f}')
    combined = ensemble([d['scores'] for d in score_sets], args.weights, args.softmax)
    top1, top5, mean_class = summarize(combined, labels)
    print(f"{'ensemble'.ljust(width)}  {top1:6.2f}  {top5:6.2f}  {mean_class:6.2f}")
    return combined, (top1, top5, mean_class)


if __name__ == '__main__':
    main()
