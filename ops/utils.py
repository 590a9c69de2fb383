"""Small helpers shared by every entry point: meters, top-k accuracy, class accuracy, seeding,
atomic file writes."""
import contextlib
import os
import random
import tempfile

import numpy as np
import torch


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


@contextlib.contextmanager
def atomic_write(path):
    """Open a binary file that replaces `path` only once fully written and flushed to disk.

    The data goes to a temporary file in the same folder, renamed over `path` in one
    `os.replace`; on any error (or Ctrl-C) the temporary file is removed and `path` keeps
    its old content.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(prefix='.tmp_', suffix=os.path.basename(path), dir=folder)
    try:
        with os.fdopen(fd, 'wb') as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException as exc:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        if isinstance(exc.__context__, KeyboardInterrupt):
            # Ctrl-C inside the writer, whose clean-up then failed (torch.save does): report
            # the interrupt, not the clean-up error
            raise KeyboardInterrupt from exc
        raise
