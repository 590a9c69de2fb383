"""Small helpers shared by every entry point: meters, top-k accuracy, class accuracy, seeding,
atomic file writes."""
import contextlib
import errno
import os
import random
import signal
import sys
import tempfile
import time

import numpy as np
import torch
from tqdm import tqdm

from ops.errors import UserError


def on_terminal() -> bool:
    """True when progress goes to a terminal; False under SLURM, nohup, a pipe or a file."""
    return sys.stderr.isatty()


def progress(iterable=None, enabled=True, **kwargs):
    """A tqdm progress bar when `enabled` and on a terminal; a silent pass-through otherwise,
    where the callers log a line per interval instead."""
    return tqdm(iterable, disable=not (enabled and on_terminal()), dynamic_ncols=True, **kwargs)


def format_duration(seconds) -> str:
    """``H:MM:SS`` of a number of seconds ('?' when unknown: None, inf or NaN)."""
    if seconds is None or not np.isfinite(seconds):
        return '?'
    minutes, secs = divmod(int(round(max(seconds, 0.0))), 60)
    hours, minutes = divmod(minutes, 60)
    return f'{hours}:{minutes:02d}:{secs:02d}'


def throughput(done, start, total=None, world_size=1, unit='clips') -> str:
    """``'<done> <unit> in H:MM:SS, <rate> <unit>/s'``, or with a `total`
    ``'<done>/<total> <unit> in H:MM:SS, <rate> <unit>/s, ETA H:MM:SS'``: `done` items took the
    time since `start` (a time.time()), the rest of `total` is expected at the same rate. With
    `world_size` processes each doing as many, the counts are all processes'."""
    done, elapsed = done * world_size, time.time() - start
    rate = done / elapsed if elapsed > 0 else float('nan')
    if total is None:
        return f'{done} {unit} in {format_duration(elapsed)}, {rate:.1f} {unit}/s'
    eta = (total * world_size - done) / rate if rate > 0 else None
    return (f'{done}/{total * world_size} {unit} in {format_duration(elapsed)}, '
            f'{rate:.1f} {unit}/s, ETA {format_duration(eta)}')


class AverageMeter:
    """Running average of a scalar (loss, accuracy, time), weighted by batch size."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.val = 0.0
        self.avg = 0.0
        self.sum = 0.0
        self.count = 0

    def update(self, val, n=1):
        self.val = float(val)
        self.sum += float(val) * n
        self.count += n
        self.avg = self.sum / self.count if self.count else 0.0


def accuracy(output, target, topk=(1,)):
    """Top-k accuracies in percent of `output` (N, num_class) against `target` (N,), as floats."""
    maxk = min(max(topk), output.size(1))
    batch_size = target.size(0)
    _, pred = output.topk(maxk, dim=1, largest=True, sorted=True)  # (N, maxk)
    correct = pred.eq(target.view(-1, 1))  # (N, maxk)
    return [correct[:, :min(k, maxk)].any(dim=1).float().sum().item() * 100.0 / batch_size
            for k in topk]


def class_accuracy(labels, predictions, num_class=None):
    """Per-class recall and its mean (the 'mean class accuracy' of TSN/TSM), in percent.

    Classes that never occur in `labels` are left out of the mean.
    Returns (per_class: np.ndarray of shape (num_class,) with nan for absent classes, mean).
    """
    from sklearn.metrics import confusion_matrix

    labels = np.asarray(labels)
    predictions = np.asarray(predictions)
    if num_class is None:
        num_class = int(max(labels.max(initial=0), predictions.max(initial=0))) + 1
    cf = confusion_matrix(labels, predictions, labels=np.arange(num_class)).astype(np.float64)
    support = cf.sum(axis=1)
    with np.errstate(invalid='ignore', divide='ignore'):
        per_class = np.where(support > 0, np.diag(cf) / support, np.nan) * 100.0
    mean = float(np.nanmean(per_class)) if np.any(support > 0) else 0.0
    return per_class, mean


def set_seed(seed):
    """Seed python, numpy and torch (all devices) for a reproducible run."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state(device):
    """The python, numpy and torch (CPU, and `device` when it is a GPU) RNG states, as plain
    Python values and tensors (a checkpoint holding them loads with weights_only=True)."""
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    state = {'python': random.getstate(),
             'numpy': (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss),
                       float(cached_gaussian)),
             'torch': torch.get_rng_state()}
    if device.type == 'cuda':
        state['cuda'] = torch.cuda.get_rng_state(device)
    return state


def restore_rng_state(state, device):
    """Undo rng_state: the RNGs continue as they were when it was taken."""
    random.setstate(state['python'])
    name, keys, pos, has_gauss, cached_gaussian = state['numpy']
    np.random.set_state((name, np.asarray(keys, dtype=np.int64).astype(np.uint32), pos,
                         has_gauss, cached_gaussian))
    torch.set_rng_state(state['torch'])
    if device.type == 'cuda' and state.get('cuda') is not None:
        torch.cuda.set_rng_state(state['cuda'], device)


TMP_PREFIX = '.tmp_'
# errors of the file system rather than of the program: reported as one line naming the path
STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EIO,
                  errno.ENOENT, errno.ENOTDIR, errno.EISDIR)
# fault injection for tests/test_faults.py and tools/fault_injection.py:
# MASNET_FAULT=<file name>:<n>:<point>:<signal> sends SIGKILL/SIGINT to this process during its
# n-th atomic write of a file of that name, at point 'open' (nothing written yet) or 'written'
# (data written, before the rename); MASNET_WRITE_DELAY=<seconds> sleeps at 'written'
FAULT_ENV, DELAY_ENV = 'MASNET_FAULT', 'MASNET_WRITE_DELAY'
_write_counts = {}


class FileWriteError(UserError, OSError):
    """A file that cannot be written (disk full, no permission, ...), with the path in the message."""


def prepare_output(path, flag):
    """Check, before any work, that the output file `path` of `flag` can be written: its missing
    folders are created (as atomic_write does); a folder that cannot be created or written, or a
    `path` that is a folder, is a FileWriteError naming the flag."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise FileWriteError(exc.errno, f"{flag} '{path}': cannot create its folder: "
                                        f"{exc.strerror}") from None
    if os.path.isdir(path):
        raise FileWriteError(errno.EISDIR, f"{flag} '{path}' is a folder, not a file")
    if not os.access(folder, os.W_OK):
        raise FileWriteError(errno.EACCES, f"{flag} '{path}': its folder is not writable")


def storage_error(exc, path):
    """The FileWriteError for `exc` if it (or an error it was raised from) is a file-system
    error such as ENOSPC, else None."""
    seen = exc
    while seen is not None:
        if isinstance(seen, FileWriteError):
            return seen
        if isinstance(seen, OSError) and seen.errno in STORAGE_ERRNOS:
            where = seen.filename or path
            return FileWriteError(seen.errno, f"cannot write '{where}': {seen.strerror}")
        seen = seen.__cause__ or seen.__context__
    return None


def _fault_point(path, point):
    """The test hook of atomic_write (see FAULT_ENV); a no-op unless the variables are set."""
    name = os.path.basename(path)
    if point == 'written' and os.environ.get(DELAY_ENV):
        time.sleep(float(os.environ[DELAY_ENV]))
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    target, nth, where, sig = spec.split(':')
    if target != name or where != point:
        return
    _write_counts[name] = _write_counts.get(name, 0) + 1
    if _write_counts[name] == int(nth):
        os.kill(os.getpid(), signal.SIGKILL if sig == 'kill' else signal.SIGINT)
        time.sleep(5)  # the signal arrives while the writer is inside the window


def file_mode():
    """0666 less the process umask: the permissions open() gives new files (0644 usually)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def remove_stale_temp_files(folder):
    """Delete the temporary files of atomic writes a killed process left in `folder`;
    returns their names. Call it only while no other process writes there (run-folder lock)."""
    if not os.path.isdir(folder):
        return []
    stale = sorted(n for n in os.listdir(folder) if n.startswith(TMP_PREFIX))
    for name in stale:
        os.remove(os.path.join(folder, name))
    return stale


@contextlib.contextmanager
def atomic_path(path):
    """A temporary path beside `path` for writers that open files themselves (OpenCV's
    VideoWriter): it keeps `path`'s extension, and replaces `path` only when the block ends
    without an error; otherwise it is removed and `path` keeps its old content. A full disk or
    a permission error raises FileWriteError naming the path."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp_path = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=os.path.basename(path),
                                        dir=folder)
        os.close(fd)
    except OSError as exc:
        raise (storage_error(exc, path) or exc) from None
    try:
        yield tmp_path
        os.chmod(tmp_path, file_mode())
        os.replace(tmp_path, path)
    except BaseException as exc:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        error = storage_error(exc, path) if isinstance(exc, OSError) else None
        if error is not None and error is not exc:
            raise error from None
        raise


@contextlib.contextmanager
def atomic_write(path, mode='wb'):
    """Open a file that replaces `path` only once fully written and flushed to disk.

    The data goes to a temporary file (``.tmp_*``) in the same folder, renamed over `path` in
    one `os.replace`; on any error (or Ctrl-C) the temporary file is removed and `path` keeps
    its old content. The file gets the permissions of a plain open() (umask respected).
    A full disk or a permission error raises FileWriteError naming the path.
    mode: 'wb' or 'w' (text).
    """
    folder = os.path.dirname(os.path.abspath(path))
    _fault_point(path, 'open')
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp_path = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=os.path.basename(path),
                                        dir=folder)
    except OSError as exc:
        raise (storage_error(exc, path) or exc) from None
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            _fault_point(path, 'written')
            os.fsync(f.fileno())
        os.chmod(tmp_path, file_mode())
        os.replace(tmp_path, path)
    except BaseException as exc:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        if isinstance(exc.__context__, KeyboardInterrupt):
            # Ctrl-C inside the writer, whose clean-up then failed (torch.save does): report
            # the interrupt, not the clean-up error
            raise KeyboardInterrupt from exc
        if not isinstance(exc, KeyboardInterrupt):
            error = storage_error(exc, path)
            if error is not None and error is not exc:
                raise error from None
        raise
