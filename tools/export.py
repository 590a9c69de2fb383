"""Export a checkpoint to ONNX and TorchScript, with a parity check against eager PyTorch.

    python tools/export.py --weights ckpt.best.pth.tar --video my_video.mp4
    python tools/export.py --weights ckpt.best.pth.tar --video frames/12345 --format onnx \
                           --output masnet --tolerance 1e-4

The exported models take (N, T, 3, H, W) normalised RGB frames and return (N, num_class)
logits. The max |exported - eager| of the logits on random input and on the --video's clip is
printed; above --tolerance x max(1, max |logit|) the command fails (exit 1). Both files carry
the checkpoint's class names, mean/std, sizes, channel order and segments as metadata
(ops/export.py); a checkpoint that records no class names (the release's) needs --categories
or --dataset.
"""
import argparse
import sys

import torch

from ops.checkpoint import model_description
from ops.cli import HelpFormatter, exit_on_user_error
from ops.dataset_config import DATASETS, get_dataset_config, read_categories
from ops.export import FORMATS, ParityError, export_and_check, export_metadata
from ops.files import prepare_output
from ops.logs import setup_logging
from ops.models import load_classifier
from ops.recognizer import Recognizer, collect_inputs
from opts import add_model_args, add_trust_arg, int_at_least


def build_parser():
    parser = argparse.ArgumentParser(formatter_class=HelpFormatter,
                                     description=__doc__.splitlines()[0])
    parser.add_argument('--weights', '--checkpoint', dest='weights', required=True,
                        help='checkpoint')
    add_trust_arg(parser)
    parser.add_argument('--video', required=True,
                        help='video file or frame folder: the real clip of the parity check')
    parser.add_argument('--format', nargs='+', default=list(FORMATS), choices=list(FORMATS))
    parser.add_argument('--output', default=None,
                        help='output path without extension (default: the checkpoint\'s)')
    parser.add_argument('--num_segments', default=None, type=int_at_least(1),
                        help='T (default: the checkpoint\'s, else 8)')
    parser.add_argument('--full_res', action='store_true', help='input_size*256/224 input')
    parser.add_argument('--tolerance', default=1e-4, type=float,
                        help='largest max |exported - eager| logit difference accepted, relative '
                             'to the largest |logit| when that is above 1 (default: %(default)g)')
    parser.add_argument('--categories', default=None,
                        help="category file (default: the checkpoint's class names)")
    parser.add_argument('--dataset', default=None,
                        help=f"{', '.join(DATASETS)} or a .json dataset file: its class names "
                             f"(default: the checkpoint's)")
    parser.add_argument('--dataset_path', default=None, help='folder holding the dataset folders')
    add_model_args(parser, defaults_from_checkpoint=True)
    return parser


def real_clip(model, video):
    """The center-crop test clip (1, T, 3, H, W) of a video file / frame folder."""
    recognizer = Recognizer(model, [str(i) for i in range(model.num_class)])
    root, records = collect_inputs(video)
    clip, _ = recognizer.dataset(root, records[:1])[0]  # (T*3, H, W)
    return clip.view(1, model.num_segments, 3, *clip.shape[-2:])


@exit_on_user_error
def main(argv=None):
    args = build_parser().parse_args(argv)
    setup_logging()
    prefix = args.output or args.weights.replace('.pth.tar', '').replace('.pth', '')
    for fmt in args.format:
        prepare_output(prefix + FORMATS[fmt], '--output')
    categories, given_by = None, None
    if args.categories:
        categories, given_by = read_categories(args.categories), f"--categories '{args.categories}'"
    elif args.dataset:
        categories = get_dataset_config(args.dataset, args.dataset_path).categories
        given_by = f'--dataset {args.dataset}'
    model, names, checkpoint = load_classifier(
        args.weights, categories, given_by, '--categories FILE or --dataset NAME',
        num_segments=args.num_segments, temporal_type=args.type, arch=args.arch,
        input_size=args.input_size, full_res=args.full_res, trust=args.trust_checkpoint)
    description = model_description(model, names, checkpoint.get('dataset'),
                                    checkpoint.get('flip'), checkpoint.get('mirror_map'))
    try:
        return export_and_check(model.eval(), prefix, args.format, real_clip(model, args.video),
                                args.tolerance, export_metadata(model, description))
    except ParityError as exc:
        sys.exit(f'export.py: error: {exc}')


if __name__ == '__main__':
    torch.set_grad_enabled(False)
    main()
