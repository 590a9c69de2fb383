"""Run folders, logging and command-line error handling shared by the entry points.

A training run writes to
``<root>/<dataset>/<type>/<arch>/num_segments_<T>/<store_name>/{log,tensorboardX,checkpoint}``
and holds ``<run folder>/run.lock`` (an fcntl lock, released by the kernel when the process
ends, even by kill -9) while it runs, so a second run on the same folder refuses to start.
"""
import contextlib
import fcntl
import functools
import glob
import json
import logging
import os
import socket
import struct
import sys
import time

from tqdm import tqdm

from ops.errors import UserError
from ops.utils import STORAGE_ERRNOS, atomic_write, storage_error

LOCK_NAME = 'run.lock'


class RunLockedError(UserError):
    """The run folder is in use by another live process."""




def dataset_tag(dataset):
    """Folder name of a dataset (the stem of a .json dataset file)."""
    return os.path.splitext(os.path.basename(dataset))[0] if dataset.endswith('.json') else dataset


def default_store_name(args):
    return f'{args.lr_type}_lr{args.lr:g}_b{args.batch_size}_e{args.epochs}'


def run_folder(root, args):
    return os.path.join(root, dataset_tag(args.dataset), args.type, args.arch,
                        f'num_segments_{args.num_segments}', args.store_name)


class _TqdmHandler(logging.StreamHandler):
    """Console log lines that do not break tqdm progress bars; records logged with
    ``extra={'console': False}`` (what a progress bar already shows) go to the log file only."""

    def emit(self, record):
        if not getattr(record, 'console', True):
            return
        try:
            tqdm.write(self.format(record), file=sys.stdout)
        except Exception:
            self.handleError(record)


class _PendingHandler(logging.Handler):
    """Keeps the records logged before the log file exists (checks run before the run folder
    is created), for the file handler set up next."""

    def __init__(self):
        super().__init__()
        self.records = []

    def emit(self, record):
        self.records.append(record)


def setup_logging(log_file=None, is_main=True):
    """Log INFO to the console (main process) and to `log_file`; returns the 'masnet' logger.

    Without `log_file` the records are also kept, and written to the log file of a later
    call (so a run's early messages reach its log.txt).
    """
    logger = logging.getLogger('masnet')
    logger.setLevel(logging.INFO)
    logger.propagate = False
    pending = []
    for handler in list(logger.handlers):
        if isinstance(handler, _PendingHandler):
            pending = handler.records
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
        for record in pending:
            file_handler.handle(record)
        logger.addHandler(file_handler)
    else:
        logger.addHandler(_PendingHandler())
    return logger


def save_args(args, path):
    with atomic_write(path, 'w') as f:
        json.dump(vars(args), f, indent=2, sort_keys=True)


class LockBusy(Exception):
    """The lock of a file is held by another live process (``holder`` says which)."""

    def __init__(self, holder):
        super().__init__(holder)
        self.holder = holder


def hold_lock(path):
    """Hold the fcntl lock of `path` (created if absent) until the returned file is closed
    (or the process ends); the file then names this process.

    Raises LockBusy naming the holder when another live process has it. A lock file left by
    a killed process does not block: the kernel released its lock with the process.
    """
    handle = open(path, 'a+')
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or 'unknown process'
        handle.close()
        raise LockBusy(holder) from None
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f'pid {os.getpid()} on {socket.gethostname()} since '
                     f'{time.strftime("%Y-%m-%d %H:%M:%S")}\n')
        handle.flush()
    except OSError as exc:
        with contextlib.suppress(OSError):  # closing retries the failed write
            handle.close()
        raise (storage_error(exc, path) or exc) from None
    return handle


def lock_run_folder(folder):
    """Hold `folder`'s run lock until the returned file is closed (or the process ends).

    Raises RunLockedError naming the holder when another live process has it.
    """
    os.makedirs(folder, exist_ok=True)
    try:
        return hold_lock(os.path.join(folder, LOCK_NAME))
    except LockBusy as busy:
        raise RunLockedError(f"run folder '{folder}' is in use by another run ({busy.holder}); "
                             f"wait for it to end or pass another --store_name") from None


def _close_progress_bars():
    """Clear the progress bars an exception left open, so the error gets a line of its own."""
    for bar in list(getattr(tqdm, '_instances', ())):
        bar.close()


def _prog():
    return os.path.basename(sys.argv[0]) or 'masnet'


def exit_on_user_error(main):
    """Run `main`, turning input errors (bad checkpoint, dataset, list file, flag) and Ctrl-C
    into one line instead of a traceback."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except (UserError, OSError) as exc:
            if isinstance(exc, OSError) and exc.errno not in STORAGE_ERRNOS:
                raise
            message = str(exc).strip()
            if 'Original Traceback' in message:  # re-raised from a DataLoader worker
                message = message.splitlines()[-1].split(': ', 1)[-1]
            _close_progress_bars()
            print(f'{_prog()}: error: {message}', file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            _close_progress_bars()
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
            if pos + 12 + length + 4 > len(data):  # a record cut short by a killed writer
                break
            event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
            pos += 12 + length + 4
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars
