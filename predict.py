"""Predict the classes of one's own videos with a trained checkpoint; no labels needed.

    python predict.py my_video.mp4 --weights ckpt.best.pth.tar
    python predict.py videos/ --weights a.pth.tar --json out.json
    python predict.py test.txt --root FRAMES/ --weights a.pth.tar --submission submission.csv
    python predict.py my_video.mp4 --weights release.pth.tar --dataset somethingv2
    python predict.py long.mp4 --weights a.pth.tar --window 64 --stride 16 --annotate out.mp4
    python predict.py 0 --weights a.pth.tar --window 64 --stride 16      # camera 0, or a URL

The input is a video file, a frame folder, a folder of videos / frame folders or a list file
(``<path> [<num_frames> [<label>]]`` lines). With --window, it is read as a stream (a video
file, a camera index or a URL) and every window of frames gets a prediction.

Class names come from the checkpoint; --categories / --dataset, when given, must name the same
classes, and are needed for checkpoints that record no names (the release's).
"""
import argparse

import torch

from ops.cli import HelpFormatter, exit_on_user_error
from ops.logs import setup_logging
from ops.run_predict import run_prediction
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
                                     description='Top-k classes of videos, files or streams.')
    parser.add_argument('input', help='video file, frame folder, folder of videos, list file; '
                                      'with --window: video file, camera index or stream URL')
    parser.add_argument('--weights', '--checkpoint', dest='weights', required=True,
                        help='checkpoint')
    add_trust_arg(parser)
    parser.add_argument('--categories', default=None,
                        help='category file, one class name per line (default: the checkpoint\'s '
                             'names, else the --dataset\'s)')
    add_data_args(parser, default_dataset=None)
    add_model_args(parser, defaults_from_checkpoint=True)
    parser.add_argument('--test_segments', default=None, type=int_at_least(1),
                        help='frames per clip (default: the checkpoint\'s, else 8)')
    add_view_args(parser)
    add_speed_args(parser)
    parser.add_argument('--root', default=None,
                        help='folder the paths of a list file are relative to '
                             '(default: its folder)')
    parser.add_argument('--image_tmpl', default=None,
                        help="frame file names, e.g. 'img_{:05d}.jpg' (default: the dataset's, "
                             "else guessed from the first frame)")
    parser.add_argument('--topk', default=5, type=int_at_least(1),
                        help='classes reported per video')
    parser.add_argument('--json', default=None, help='write the predictions as JSON')
    parser.add_argument('--csv', default=None, help='write the predictions as CSV')
    parser.add_argument('--submission', default=None,
                        help="write a Something-Something V2 submission ('id;c1;...;c5' lines)")
    parser.add_argument('--window', default=None, type=int_at_least(1),
                        help='sliding-window mode: frames per window (T are sampled from each)')
    parser.add_argument('--stride', default=None, type=int_at_least(1),
                        help='frames between window starts (default: window // 2)')
    parser.add_argument('--annotate', default=None,
                        help='sliding-window mode: write the video with the predictions drawn')
    parser.add_argument('--max_frames', default=None, type=int_at_least(1),
                        help='sliding-window mode: stop after this many frames (for streams)')
    parser.add_argument('--device', default=None,
                        help="torch device, e.g. 'cpu', 'cuda:0' (default: cuda if available)")
    return parser


@exit_on_user_error
def main(argv=None):
    args = build_parser().parse_args(argv)
    setup_logging()
    return run_prediction(args)


if __name__ == '__main__':
    torch.set_grad_enabled(False)
    main()
