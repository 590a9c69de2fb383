"""Run folders, logging and command-line error handling shared by the entry points.

A training run writes to
``<root>/<dataset>/<type>/<arch>/num_segments_<T>/<store_name>/{log,tensorboardX,checkpoint}``.
"""
import functools
import glob
import json
import logging
import os
import struct
import sys

from tqdm import tqdm

from ops.checkpoint import CheckpointError
from ops.dataset import DataError
from ops.dataset_config import DatasetError
from ops.engine import TrainingDiverged

# errors of the user's input (or a diverged run), reported as one line instead of a traceback
USER_ERRORS = (CheckpointError, DatasetError, DataError, TrainingDiverged)


def dataset_tag(dataset):
    """Folder name of a dataset (the stem of a .json dataset file)."""
    return os.path.splitext(os.path.basename(dataset))[0] if dataset.endswith('.json') else dataset


def default_store_name(args):
    return f'{args.lr_type}_lr{args.lr:g}_b{args.batch_size}_e{args.epochs}'


def run_folder(root, args):
    return os.path.join(root, dataset_tag(args.dataset), args.type, args.arch,
                        f'num_segments_{args.num_segments}', args.store_name)


class _TqdmHandler(logging.StreamHandler):
    """Console log lines that do not break tqdm progress bars."""

    def emit(self, record):
        try:
            tqdm.write(self.format(record), file=sys.stdout)
        except Exception:
            self.handleError(record)


def setup_logging(log_file=None, is_main=True):
    """Log INFO to the console (main process) and to `log_file`; returns the 'masnet' logger."""
    logger = logging.getLogger('masnet')
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    console = _TqdmHandler()
    console.setLevel(logging.INFO if is_main else logging.WARNING)
    console.setFormatter(logging.Formatter('%(message)s'))
    logger.addHandler(console)
    if log_file and is_main:
        os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
        file_handler = logging.FileHandler(log_file)
        file_handler.setFormatter(logging.Formatter('%(asctime)s %(message)s', '%Y-%m-%d %H:%M:%S'))
        logger.addHandler(file_handler)
    return logger


def save_args(args, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, 'w') as f:
        json.dump(vars(args), f, indent=2, sort_keys=True)


def _prog():
    return os.path.basename(sys.argv[0]) or 'masnet'


def exit_on_user_error(main):
    """Run `main`, turning input errors (bad checkpoint, dataset, list file, flag) and Ctrl-C
    into one line instead of a traceback."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except USER_ERRORS + (ValueError,) as exc:
            message = str(exc).strip()
            if 'Original Traceback' in message:  # re-raised from a DataLoader worker
                message = message.splitlines()[-1]
            print(f'{_prog()}: error: {message}', file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print(f'{_prog()}: interrupted', file=sys.stderr)
            sys.exit(130)

    return wrapper


def read_scalars(event_dir):
    """``{tag: [(step, value), ...]}`` of the TensorBoard event files in `event_dir`.

    Reads the TFRecord framing directly (length, crc, payload, crc) with tensorboardX's
    protobuf classes, so no TensorFlow/TensorBoard install is needed.
    """
    from tensorboardX.proto import event_pb2

    scalars = {}
    for path in sorted(glob.glob(os.path.join(event_dir, 'events.out.tfevents.*'))):
        with open(path, 'rb') as f:
            data = f.read()
        pos = 0
        while pos + 12 <= len(data):
            (length,) = struct.unpack('<Q', data[pos:pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
            pos += 12 + length + 4
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars
