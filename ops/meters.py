"""What a loop measures: running averages, top-k and per-class accuracy, throughput and
durations for the progress lines."""
import time

import numpy as np


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
