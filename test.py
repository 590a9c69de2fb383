"""Evaluate checkpoints with several crops / clips per video, alone or as an ensemble.

    python test.py --dataset somethingv1 --weights a.pth.tar --test_segments 8 --test_crops 1
    python test.py --dataset somethingv1 --weights a.pth.tar,b.pth.tar --test_segments 8,16 \
                   --test_crops 3 --full_res --twice_sample
    python test.py --dataset synthetic --weights a.pth.tar --temporal_sensitivity --json t.json

Prints top-1 / top-5 / mean class accuracy of every model and of the ensemble and writes one
score file per model into --save_scores (read by average_scores.py). On an unlabelled list
(label -1, e.g. gen_label's test split) it writes the predictions only (score files,
--csv_file, --submission); on a partly labelled one the accuracy is over the labelled videos.
--frame_order reverses or shuffles the sampled frames of every clip; --temporal_sensitivity
evaluates every order and prints the table (top-1, predictions changed, time-reversed twins
given; docs/testing.md, "Does the model use time?").
"""
import argparse

import torch

from ops.cli import HelpFormatter, exit_on_user_error
from ops.dataset import ViewProtocol
from ops.errors import FlagError
from ops.logs import setup_logging
from ops.run_eval import evaluate_checkpoints, temporal_sensitivity
from ops.scores import DEFAULT_SCORE_DIR
from opts import (
    add_data_args,
    add_model_args,
    add_speed_args,
    add_trust_arg,
    add_view_args,
    int_at_least,
)


def build_parser():
    parser = argparse.ArgumentParser(formatter_class=HelpFormatter,
                                     description='Multi-crop / multi-clip evaluation of MAS-Net.')
    add_data_args(parser)
    add_model_args(parser, defaults_from_checkpoint=True)
    parser.add_argument('--weights', '--checkpoints', dest='weights', required=True,
                        help='checkpoint(s), comma-separated for an ensemble')
    add_trust_arg(parser)
    parser.add_argument('--test_segments', default=None,
                        help="segments per model, comma-separated (one value for all; default: "
                             "the checkpoint's, else the release's 16)")
    add_view_args(parser)
    add_speed_args(parser)
    limit = parser.add_mutually_exclusive_group()
    limit.add_argument('--max_num', type=int_at_least(1), default=None,
                       help="evaluate the first N batches (N x --batch_size videos), as the "
                            "release's --max_num")
    limit.add_argument('--max_videos', type=int_at_least(1), default=None,
                       help='evaluate the first N videos')
    parser.add_argument('--test_list', default=None, help='list file (default: the val list)')
    parser.add_argument('--coeff', '--ensemble_weights', dest='coeff', default=None,
                        help='ensemble weights, one per checkpoint, comma-separated')
    parser.add_argument('--csv_file', default=None,
                        help='write "video_id;predicted class" lines (a submission file)')
    parser.add_argument('--submission', default=None,
                        help="write a Something-Something V2 submission ('id;c1;...;c5' lines)")
    parser.add_argument('--save_scores', default=DEFAULT_SCORE_DIR,
                        help="folder of the score files ('' = don't write) (default: %(default)s)")
    parser.add_argument('--log_file', default=None, help='also write the results to this file')
    parser.add_argument('--release_score_name', action='store_true',
                        help="name the score files as the release's test.py does "
                             "(<dataset>_segment<T>_crops<C>_clips<K>_shape<S>.npz), for its "
                             "average_scores.py: with --save_scores experiments/test/EN")
    parser.add_argument('--overwrite', action='store_true',
                        help="replace score files of another checkpoint, list or settings "
                             "(default: refuse)")
    parser.add_argument('--temporal_sensitivity', action='store_true',
                        help='evaluate the same views in every --frame_order (forward, reversed, '
                             'shuffled; a score file each) and print top-1, the share of '
                             'predictions changed from forward and the share of videos given '
                             'their time-reversed twin class')
    parser.add_argument('--json', default=None,
                        help='with --temporal_sensitivity: write its table to this JSON file')
    return parser


def parse_args(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        ViewProtocol.from_args(args)
    except FlagError as exc:
        parser.error(str(exc))
    if args.json and not args.temporal_sensitivity:
        parser.error('--json writes the table of --temporal_sensitivity: pass it too')
    return args


@exit_on_user_error
def main(argv=None):
    args = parse_args(argv)
    setup_logging(args.log_file)
    if args.temporal_sensitivity:
        return temporal_sensitivity(args)
    return evaluate_checkpoints(args)


if __name__ == '__main__':
    torch.set_grad_enabled(False)
    main()
