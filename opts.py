"""Command-line flags of main.py (training); the model flags are shared with test.py and CAM.py.

Every numeric flag is checked against its domain by argparse (exit 2, the flag named) before
anything is created. A release spelling whose word means something else in another script
has a clearer alias beside it (e.g. --dense_sample / --dense_window); see docs/glossary.md.

A resume compares the flags marked where they are defined: `shaping_flag(...)` (they shape the
network: a resume never changes them) and `recipe_flag(...)` (the training recipe: changed only
with --resume_changed); recipe_flags() lists them from the parser, so a new flag of the recipe
is one marked definition."""
import argparse
import math
import os

from archs import ARCHS
from ops.cli import HelpFormatter
from ops.dataset import FRAME_ORDERS, LOADER_TIMEOUT, TEST_SAMPLINGS
from ops.dataset_config import DATASETS
from ops.MASNet import FORMS, form_name
from ops.optim import LR_SCHEDULES
from ops.temporal import temporal_types, temporal_types_help
from ops.video_readers import VIDEO_BACKENDS


def int_at_least(minimum):
    """argparse type: an integer >= `minimum` (argparse names the flag in its error)."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f'invalid int value: {text!r}') from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f'must be >= {minimum}, got {value}')
        return value
    parse.__name__ = f'int >= {minimum}'
    return parse


def float_in(low, high=None, low_open=False):
    """argparse type: a finite float in [low, high) (or (low, high) with low_open; no upper
    bound without `high`); argparse names the flag in its error."""
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f'invalid float value: {text!r}') from None
        too_low = value <= low if low_open else value < low
        if not math.isfinite(value) or too_low or (high is not None and value >= high):
            raise argparse.ArgumentTypeError(f'must be {domain}, got {text}')
        return value
    domain = (f"in {'(' if low_open else '['}{low}, {high})" if high is not None
              else f"{'>' if low_open else '>='} {low}")
    parse.__name__ = f'float {domain}'
    return parse


def run_name(text):
    """argparse type of --store_name: one folder name, which cannot leave the run roots."""
    separators = [sep for sep in (os.sep, os.altsep) if sep]
    if os.path.isabs(text) or text in ('.', '..') or any(sep in text for sep in separators):
        raise argparse.ArgumentTypeError(f'must be a plain folder name (no path separator, no '
                                         f'absolute path, not . or ..), got {text!r}')
    return text


def recipe_flag(action):
    """Mark the argparse `action` (what parser.add_argument returns) as a flag of the training
    recipe: resume refuses a change of it without --resume_changed (--epochs may grow)."""
    action.recipe = 'recipe'
    return action


def shaping_flag(action):
    """Mark the argparse `action` as a flag that shapes the network or what it learns: a resume
    never changes it."""
    action.recipe = 'shaping'
    return action


def recipe_flags(parser=None):
    """``{dest: (kind, spelling)}`` of the flags marked recipe_flag / shaping_flag in `parser`
    (default: main.py's), kind 'recipe' or 'shaping', spelling the first long option."""
    parser = parser or build_parser()
    marked = {}
    for action in parser._actions:
        kind = getattr(action, 'recipe', None)
        if kind:
            spelling = next(o for o in action.option_strings if o.startswith('--'))
            marked[action.dest] = (kind, spelling)
    return marked


def add_trust_arg(parser):
    """--trust_checkpoint, on every command that reads a checkpoint."""
    parser.add_argument('--trust_checkpoint', action='store_true',
                        help='unpickle checkpoints in full even where they need more than '
                             'tensors, numbers and numpy scalars: code in the file can run; '
                             'only for files you trust (default: refuse them)')


def add_data_args(parser, default_dataset='synthetic', loader=True):
    """--dataset/--dataset_path/--video_backend, and -j/--workers when the command runs a data
    loader."""
    shaping_flag(parser.add_argument(
        '--dataset', default=default_dataset,
                        help=f"{', '.join(DATASETS)} (synthetic: generated on first use), or a "
                             f".json dataset file" + ('' if default_dataset else
                                                     " (default: the checkpoint's)")))
    parser.add_argument('--dataset_path', default=None,
                        help="folder holding the dataset folders (default: data/ for synthetic; "
                             "else the release's ../, or ../../datasets/ (the README's training "
                             "path) when the dataset is only there)")
    if loader:
        parser.add_argument('-j', '--workers', default=8, type=int_at_least(0),
                            help='data loading processes')
        parser.add_argument('--loader_timeout', default=LOADER_TIMEOUT, type=float_in(0),
                            help='seconds the data loader may yield no batch before the run stops '
                                 'with a line naming the video a worker is stuck on (0: never)')
    parser.add_argument('--video_backend', default='auto', choices=VIDEO_BACKENDS,
                        help="decoder of video files in the lists: opencv, pyav (the 'av' "
                             "package), decord; auto: the fastest installed (default: %(default)s)")


def add_model_args(parser, defaults_from_checkpoint=False):
    """--type/--arch/--input_size; with defaults_from_checkpoint they default to None (= read
    from the checkpoint, then to MASNet/resnet50/224)."""
    ckpt = defaults_from_checkpoint
    shaping_flag(parser.add_argument(
        '--type', default=None if ckpt else 'MASNet', choices=temporal_types(),
        help=f'temporal modules (ops/temporal.py): {temporal_types_help()}'))
    shaping_flag(parser.add_argument('--arch', default=None if ckpt else 'resnet50', choices=ARCHS,
                                     help='backbone'))
    shaping_flag(parser.add_argument('--input_size', default=None if ckpt else 224,
                                     type=int_at_least(1),
                                     help='network input side in pixels (224 in the paper)'))
    parser.add_argument('--gpus', nargs='+', type=int_at_least(0), default=None,
                        help='GPU ids for DataParallel (default: 0 1 2 3 as the release, or as '
                             'many of them as are visible; the CPU without CUDA)')


def add_speed_args(parser):
    parser.add_argument('--compile', action='store_true',
                        help='torch.compile the model (the first batches compile it: minutes '
                             'on a CPU, see docs/speed.md); eager where it cannot compile')
    parser.add_argument('--channels_last', action='store_true',
                        help='run the convolutions, and MAS-Net\'s blocks, in NHWC memory '
                             '(same results; faster on AVX-512 CPUs: docs/speed.md)')
    parser.add_argument('--mas_form', default=None, choices=FORMS, type=form_name,
                        help="how MAS blocks compute: fast (cheaper equivalent ops, checked "
                             "against the readable modules when first run), compiled (their "
                             "element-wise core torch.compile'd: faster steps after a compile of "
                             "up to a minute), readable (MAM/MSM/TIM.forward: the paper's math, "
                             "and what runs an edited module); old names eager, reference; "
                             "default: $MASNET_FORM, else fast (docs/fused_block.md)")


def sampling_help():
    """The registered test samplings with their clip counts, for --test_sampling's help."""
    return ', '.join(f"{name} ({'K' if s.clips is None else s.clips} clip(s)"
                     f"{', seeded' if s.seeded else ''})" for name, s in TEST_SAMPLINGS.items())


def add_view_args(parser):
    """Test-time views of test.py and predict.py, in the group 'test-time views': each flag of
    the group is a parameter of ops.dataset.ViewProtocol.from_flags, which makes the one
    protocol of them (tests/test_dataset.py checks that none is left out); and --batch_size."""
    parser.add_argument('--batch_size', '--batch-size', default=8, type=int_at_least(1),
                        help='videos per batch (the release\'s 8)')
    views = parser.add_argument_group('test-time views')
    views.add_argument('--test_crops', default=1, type=int, choices=[1, 3, 5, 10],
                       help='1 center, 3 full-res, 5 corners+center, 10 = 5 + flips')
    views.add_argument('--full_res', action='store_true',
                       help='crop input_size*256/224 (256 px) instead of input_size')
    views.add_argument('--twice_sample', action='store_true',
                       help='2 clips per video (--test_sampling twice)')
    views.add_argument('--dense_sample', '--dense_clips', dest='dense_sample', action='store_true',
                       help='--dense_sample_num clips per video, each T frames spread over the '
                            'whole video from a shifted start (--test_sampling dense; not the '
                            'dense window of main.py)')
    views.add_argument('--dense_sample_num', '--test_clips', dest='dense_sample_num', default=10,
                       type=int_at_least(1),
                       help='K, clips per video of --dense_sample / --dense_clips (and of every '
                            '--test_sampling without a fixed clip count)')
    views.add_argument('--test_sampling', default=None, choices=sorted(TEST_SAMPLINGS),
                       help=f'clips of each video: {sampling_help()}; see ops/dataset.py '
                            f'(default: center, or as --twice_sample / --dense_sample say)')
    views.add_argument('--test_seed', default=0, type=int_at_least(0),
                       help='seed of a random --test_sampling and of --frame_order shuffled '
                            '(the same clips and order of a video in every run)')
    views.add_argument('--frame_order', default='forward', choices=FRAME_ORDERS,
                       help="order of each clip's sampled frames: forward (as sampled), "
                            'reversed, or shuffled (seeded per video): does the model use time? '
                            '(test.py --temporal_sensitivity)')
    views.add_argument('--softmax', action='store_true',
                       help="softmax of the views' averaged logits (the release's and TSM's)")


def build_parser():
    parser = argparse.ArgumentParser(
        formatter_class=HelpFormatter,
        description='Train MAS-Net (or the TSM / TSN baselines) on video frame folders.')
    add_data_args(parser)
    add_model_args(parser)
    add_speed_args(parser)
    shaping_flag(parser.add_argument('--num_segments', type=int_at_least(1), default=8,
                                     help='frames sampled per clip (T)'))
    recipe_flag(parser.add_argument('--dropout', '--dp', '--do', default=0.5, type=float_in(0, 1),
                                    help='dropout before new_fc (--dp: the release\'s spelling)'))
    parser.add_argument('--pretrain', default='imagenet',
                        help="backbone initialisation: 'imagenet' (torchvision's weights in the "
                             "torch hub cache, or the release's file there, downloaded and "
                             "checked against their sha256 when missing), 'none', or a weight "
                             "file")
    parser.add_argument('--offline', action='store_true',
                        help='never download (--pretrain imagenet then needs the file in the '
                             'torch hub cache); the environment variable MASNET_OFFLINE=1 does '
                             'the same')
    recipe_flag(parser.add_argument(
        '--partialbn', '--pbn', dest='partialbn', action='store_true',
        help="TSN/TSM's partial BN: freeze every pretrained BatchNorm but the first (off by "
             "default, as in the release)"))
    parser.add_argument('--no_partialbn', '--npb', dest='partialbn', action='store_false',
                        help='train every BatchNorm (the default; TSM\'s flag, accepted)')
    recipe_flag(parser.add_argument(
        '--dense_sample', '--dense_window', dest='dense_sample', action='store_true',
        help='I3D-style dense sampling: T frames at stride 64/T in a 64-frame window (random in '
             'training, centered in validation; not the clips of test.py --dense_sample)'))

    recipe_flag(parser.add_argument('--epochs', default=70, type=int_at_least(1)))
    recipe_flag(parser.add_argument(
        '-b', '--batch-size', '--batch_size', default=32, type=int_at_least(1),
        help='clips per optimiser step, over all GPUs, processes and --accumulate micro-batches'))
    recipe_flag(parser.add_argument(
        '--accumulate', '--iter_size', default=1, type=int_at_least(1),
        help="split each optimiser step into K micro-batches of --batch-size / K clips (per "
             "process), their gradients summed: a K-GPU recipe on one device (docs/training.md)"))
    recipe_flag(parser.add_argument(
        '--recipe_batch', default=None, type=int_at_least(1),
        help="the effective batch of the recipe this run follows, for the linear-scaling check "
             "(default: scripts/train.sh's for --dataset and --num_segments, 32 or 16; none for "
             "other datasets)"))
    recipe_flag(parser.add_argument(
        '--scale_lr', action='store_true',
        help='apply the linear scaling rule: --lr x effective batch / --recipe_batch'))
    recipe_flag(parser.add_argument(
        '--sync_bn', action='store_true',
        help='synchronised BatchNorm over the processes of a torchrun run (CUDA only): '
             'statistics of the whole batch, not of each GPU\'s clips (docs/training.md)'))
    recipe_flag(parser.add_argument('--lr', '--learning-rate', default=0.01,
                                    type=float_in(0, low_open=True), help='base learning rate'))
    recipe_flag(parser.add_argument(
        '--lr_type', default='MAS_lr', choices=LR_SCHEDULES,
        help='step_lr: x0.1 at each step; MAS_lr: x0.1, x0.1, x0.5, x0.2 at 4 steps; cos_lr: '
             'half cosine (each constant within an epoch, as the release; a new schedule: '
             'docs/contributing.md)'))
    recipe_flag(parser.add_argument(
        '--lr_steps', default=[30, 40, 50, 60], type=float_in(0), nargs='+',
        help='epochs at which the lr decays, in increasing order (MAS_lr with other than 4 '
             'steps decays x0.1 at each, as step_lr, like the release)'))
    recipe_flag(parser.add_argument(
        '--warmup', default=0, type=int_at_least(0),
        help='epochs of linear lr warm-up: epoch e < N uses --lr x (e+1)/N in place of the '
             'schedule, as the release (0: none)'))
    recipe_flag(parser.add_argument('--momentum', default=0.9, type=float_in(0, 1)))
    recipe_flag(parser.add_argument('--weight_decay', '--wd', default=5e-4, type=float_in(0)))
    recipe_flag(parser.add_argument('--clip-gradient', '--gd', default=20, type=float_in(0),
                                    help='clip gradients to this global norm (0: off)'))
    recipe_flag(parser.add_argument('--amp', action='store_true',
                                    help='mixed precision (autocast + GradScaler)'))
    recipe_flag(parser.add_argument('--seed', default=0, type=int_at_least(0),
                                    help='seed of sampling, augmentation, init'))

    parser.add_argument('--print-freq', '-p', default=20, type=int_at_least(1),
                        help='log every N iterations')
    parser.add_argument('--eval-freq', '-ef', default=1, type=int_at_least(1),
                        help='validate every N epochs')
    parser.add_argument('--resume', default='',
                        help="continue training from this checkpoint (default: the run folder's "
                             "ckpt.pth.tar when there is one)")
    parser.add_argument('--resume_changed', action='store_true',
                        help='resume although the recipe flags (lr, schedule, batch size, ...) '
                             'differ from the checkpoint\'s; each difference is logged. Flags '
                             'shaping the network (--type, --arch, --num_segments, --input_size, '
                             '--dataset) never change on resume')
    parser.add_argument('--tune_from', default='',
                        help='initialise from a checkpoint of another dataset (new_fc not loaded)')
    add_trust_arg(parser)
    parser.add_argument('-e', '--evaluate', action='store_true', help='only validate')
    parser.add_argument('--start-epoch', default=0, type=int_at_least(0),
                        help='first epoch (set by --resume)')
    parser.add_argument('--save_every_iters', default=0, type=int_at_least(0),
                        help='also write a resumable mid-epoch checkpoint every N iterations, for '
                             'jobs killed without warning (0: only at SIGTERM / SIGUSR1 and at '
                             'the end of each epoch)')
    parser.add_argument('--dist_timeout', default=1800, type=int_at_least(1),
                        help='under torchrun: seconds a process waits for the others in a '
                             'collective before the run stops with one line (as torch)')

    parser.add_argument('--store_name', default='', type=run_name,
                        help='run name (default: from the settings)')
    parser.add_argument('--root_log', default='experiments',
                        help='root of log/ and tensorboardX/: '
                             '<root_log>/<dataset>/<type>/<arch>/num_segments_<T>/<store_name>/')
    parser.add_argument('--root_checkpoint', default='experiments',
                        help='root of checkpoint/, laid out like --root_log')
    return parser


def parse_args(argv=None):
    """main.py's flags; argparse's one-line error (exit 2) for values out of their domain, and
    for --lr_steps out of increasing order (a typo: the schedule would silently differ)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if list(args.lr_steps) != sorted(args.lr_steps):
        parser.error(f"argument --lr_steps: must be in increasing order, got "
                     f"{' '.join(f'{s:g}' for s in args.lr_steps)}")
    return args
