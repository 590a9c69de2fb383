"""Grad-CAM heat maps of a trained model on one video.

    python CAM.py                                    # the demo's model, first synthetic val video
    python CAM.py --weights your.pth.tar --video frames/12345 --output cam.png
    python CAM.py --dataset somethingv1 --dataset_path ../../datasets \
                  --weights release.pth.tar --video 12345 --output cam.png

--video is a frame folder, a video file, or a video id (folder name) of the dataset's lists
(--dataset's, else those of the dataset the checkpoint was trained on). Class names come from
the checkpoint; --dataset, when given, must name the same classes, and is needed for
checkpoints that record no names (the release's).
"""
import argparse
import os

from ops.cli import HelpFormatter, exit_on_user_error
from ops.gradcam import DEMO_CHECKPOINT, explain
from ops.logs import setup_logging
from opts import add_data_args, add_model_args, add_trust_arg, int_at_least


def build_parser():
    parser = argparse.ArgumentParser(formatter_class=HelpFormatter,
                                     description='Grad-CAM visualisation of a MAS-Net checkpoint.')
    add_data_args(parser, default_dataset=None, loader=False)
    parser.add_argument('--weights', '--checkpoint', dest='weights', default=DEMO_CHECKPOINT,
                        help="checkpoint (the demo's by default: %(default)s)")
    add_trust_arg(parser)
    parser.add_argument('--video', default=None,
                        help='frame folder, video file or video id (default: first val video)')
    parser.add_argument('--label', type=int_at_least(0), default=None,
                        help='ground-truth class of a --video given as folder/file, if known')
    parser.add_argument('--num_segments', type=int_at_least(1), default=None,
                        help='default: the checkpoint\'s')
    parser.add_argument('--target_class', type=int_at_least(0), default=None,
                        help='default: the predicted class')
    parser.add_argument('--output', default=os.path.join('outputs', 'CAM_result.png'),
                        help='figure to write (`make figures` writes imgs/CAM_result.png)')
    add_model_args(parser, defaults_from_checkpoint=True)
    return parser


@exit_on_user_error
def main(argv=None):
    args = build_parser().parse_args(argv)
    setup_logging()
    return explain(args)


if __name__ == '__main__':
    main()
