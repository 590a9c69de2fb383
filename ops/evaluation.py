"""Multi-view evaluation, shared by test.py and the Recognizer API, and the error analysis of
its scores.

Evaluation: the scores of every video averaged over its views (crops x clips), checked to be
finite, and the memory one batch of views needs checked before anything is decoded.

Error analysis of a score file: confusion matrix, per-class accuracy, most-confused pairs,
top-5 per video. test.py writes these beside each score file ``<name>.npz``, in the folder
``<name>_analysis/`` (a folder, so that average_scores.py's ``*.npz`` finds only score files):

    confusion.npz    confusion (C, C) int64 (rows: true class, columns: predicted),
                     per_class_accuracy (C,) percent (nan: class absent), categories
    confusion.csv    the matrix with class names as row / column headers
    per_class.csv    class, videos, correct, accuracy (%)
    top5.csv         video, label, then the 5 best classes with their probabilities
    confusion.png    the matrix (row-normalised) and the most-confused pairs, named
    calibration.json expected calibration error and the confidence bins (write_calibration)
    reliability.png  the reliability diagram of those bins

Temporal sensitivity (test.py --temporal_sensitivity): the scores of the same videos in another
frame order (test.py --frame_order) against the forward ones: top-1, the share of videos whose
prediction changes, and how often a video of a class with a time-reversed twin
(time_reversed_pairs) is given the twin.
"""
import csv
import io
import json
import logging
import os
import re
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ops.checkpoint import unwrap_model
from ops.dataset_config import mirror_pairs
from ops.errors import UserError
from ops.files import atomic_write
from ops.logs import progress
from ops.meters import format_duration, throughput
from ops.scores import UNLABELLED, softmax

logger = logging.getLogger('masnet')


class NonFiniteScoresError(UserError):
    """Scores with NaN / inf: finite weights whose logits overflow on these inputs."""


def check_finite_scores(scores, source, video_ids=None):
    """Refuse class scores (N, C) holding NaN or inf, naming `source` (e.g. the checkpoint) and
    the first such videos, so that no accuracy, ranking or score file is made of them."""
    bad = np.flatnonzero(~np.isfinite(np.asarray(scores)).all(axis=-1))
    if bad.size:
        named = ('' if video_ids is None
                 else f" (first: {', '.join(str(video_ids[i]) for i in bad[:3])})")
        raise NonFiniteScoresError(f"{source}: non-finite scores for {bad.size} of "
                                   f"{len(scores)} video(s){named}: the model's outputs overflow "
                                   f"on this input; nothing reported or written")


def memory_bytes(device):
    """Bytes of the machine's memory, or the smaller GPU memory when `device` is CUDA."""
    total = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
    if device.type == 'cuda':
        total = min(total, torch.cuda.mem_get_info(device)[1])
    return total


def check_view_memory(batch_size, crops, clips, segments, crop_size, device):
    """Refuse, before anything is decoded, test views whose one input batch (batch x crops x
    clips x T frames of 3 x crop x crop float32 values) exceeds the memory of the machine
    (of the GPU on CUDA)."""
    needed = batch_size * crops * clips * segments * 3 * crop_size ** 2 * 4
    available = memory_bytes(device)
    if needed > available:
        raise UserError(f'one batch of --batch_size {batch_size} x {crops} crop(s) x {clips} '
                        f'clip(s) x {segments} frames of {crop_size}px needs '
                        f'{needed / 2 ** 30:.4g} GiB, more than the {available / 2 ** 30:.4g} GiB '
                        f'of {device.type} memory: lower --dense_sample_num, --test_crops or '
                        f'--batch_size')


def average_views(scores: torch.Tensor, use_softmax: bool = False) -> torch.Tensor:
    """(N, C) scores of (N, V, C) view logits: the views' logits averaged, then softmax if
    `use_softmax` (as the release and TSM: softmax of the averaged logits)."""
    scores = scores.mean(dim=1)
    return scores.softmax(dim=1) if use_softmax else scores


@torch.no_grad()
def evaluate_models(models, loaders, num_segments: List[int], device: torch.device,
                    use_softmax: bool = False) -> Tuple[List[np.ndarray], np.ndarray]:
    """Per-video scores of every model, averaged over its views (crops x clips).

    models / loaders / num_segments: one entry per model; the loaders iterate the same
    videos in the same order (shuffle off). Returns (list of (N, num_class) arrays, labels).
    """
    outputs = [[] for _ in models]
    all_labels = []
    total = len(loaders[0].dataset)
    bar = progress(total=total, desc='test', unit='video')
    log_every = max(1, len(loaders[0]) // 10)  # without a bar: a line per tenth of the videos
    start, seen, views = time.time(), 0, 0  # views: clips through the models
    for batch, batches in enumerate(zip(*loaders), start=1):
        labels = batches[0][1]
        for k, (model, (clips, _), segments) in enumerate(zip(models, batches, num_segments)):
            n = clips.size(0)
            clips = clips.to(device).view(-1, segments * 3, *clips.shape[-2:])  # (N*V, T*3, H, W)
            views += clips.size(0)
            scores = model(clips).float().view(n, -1, unwrap_model(model).num_class)  # (N, V, C)
            outputs[k].append(average_views(scores, use_softmax).cpu())
        all_labels.append(labels)
        bar.update(labels.size(0))
        seen += labels.size(0)
        if bar.disable and (batch % log_every == 0 or batch == len(loaders[0])):
            logger.info(f'test: {throughput(seen, start, total, unit="videos")}')
    bar.close()
    elapsed = max(time.time() - start, 1e-9)
    logger.info(f'test: evaluated {seen} videos, {views} clips (views x models) in '
                f'{format_duration(elapsed)}: {seen / elapsed:.1f} videos/s, '
                f'{views / elapsed:.1f} clips/s')
    return [torch.cat(o).numpy() for o in outputs], torch.cat(all_labels).numpy()



_REVERSED_WORDS = {'up': 'down', 'down': 'up', 'upwards': 'downwards', 'downwards': 'upwards',
                   'growing': 'shrinking', 'shrinking': 'growing'}
_REVERSED_RE = re.compile(r'\b(upwards|downwards|up|down|growing|shrinking)\b', re.IGNORECASE)


def time_reversed_pairs(categories: Sequence[str]) -> Dict[int, int]:
    """``{label: label of its time-reversed twin}`` for the classes whose name, played backwards,
    is another class's: the mirror pairs (ops.dataset_config.mirror_pairs: left <-> right,
    clockwise <-> counterclockwise; "from left to right" backwards is "from right to left"),
    and the names that swap up <-> down, upwards <-> downwards or growing <-> shrinking (the
    synthetic dataset's four pairs; Something-Something's "Moving something up" / "down")."""
    pairs = mirror_pairs(list(categories))
    index = {name.strip().lower(): i for i, name in enumerate(categories)}
    for i, name in enumerate(categories):
        swapped = _REVERSED_RE.sub(lambda m: _REVERSED_WORDS[m.group(1).lower()],
                                   name.strip().lower())
        j = index.get(swapped)
        if j is not None and j != i:
            pairs.setdefault(i, j)
    return pairs


def order_sensitivity(forward: np.ndarray, scores: np.ndarray, labels: np.ndarray,
                      twins: Dict[int, int]) -> Dict[str, Optional[float]]:
    """How the scores (N, C) of the videos in another frame order differ from the `forward`
    ones (N, C): ``top1`` (% of the labelled videos), ``changed`` (% of all videos whose
    predicted class is not the forward one), ``twin`` (% of the labelled videos of a class in
    `twins`, {label: twin label}, that are predicted as the twin; None without such videos),
    ``twin_videos`` (their count) and ``pairs`` ({'a/b': [twin %, videos]} per pair of twins
    a < b whose videos are in the list)."""
    labels = np.asarray(labels)
    predicted, before = np.asarray(scores).argmax(axis=1), np.asarray(forward).argmax(axis=1)
    known = labels != UNLABELLED
    twin_of = np.array([twins.get(int(y), -1) if y != UNLABELLED else -1
                        for y in labels])  # (N,)
    paired = known & (twin_of >= 0)
    gave_twin = predicted == twin_of
    pairs = {}
    for a, b in sorted((a, b) for a, b in twins.items() if a < b):
        of_pair = paired & np.isin(labels, (a, b))
        if of_pair.any():
            pairs[f'{a}/{b}'] = [float(gave_twin[of_pair].mean() * 100), int(of_pair.sum())]
    return dict(top1=float((predicted[known] == labels[known]).mean() * 100) if known.any()
                else None,
                changed=float((predicted != before).mean() * 100),
                twin=float(gave_twin[paired].mean() * 100) if paired.any() else None,
                twin_videos=int(paired.sum()), pairs=pairs)


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_class: int) -> np.ndarray:
    """``(C, C)`` counts: entry [i, j] = videos of class i predicted as j."""
    matrix = np.zeros((num_class, num_class), dtype=np.int64)
    np.add.at(matrix, (np.asarray(labels), np.asarray(predictions)), 1)
    return matrix


def per_class_accuracy(matrix: np.ndarray) -> np.ndarray:
    """Recall of each class in percent, nan for classes without videos."""
    support = matrix.sum(axis=1)
    with np.errstate(invalid='ignore', divide='ignore'):
        return np.where(support > 0, np.diag(matrix) / support * 100.0, np.nan)


def most_confused(matrix: np.ndarray, count: int = 10) -> List[Tuple[int, int, int]]:
    """[(true class, predicted class, videos)] of the largest off-diagonal entries."""
    off = matrix.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(-off, axis=None, kind='stable')[:count]
    pairs = [(int(i), int(j), int(off[i, j])) for i, j in zip(*np.unravel_index(order, off.shape))]
    return [p for p in pairs if p[2] > 0]


def _csv_bytes(rows):
    text = io.StringIO()
    csv.writer(text, lineterminator='\n').writerows(rows)
    return text.getvalue().encode()


def save_confusion_figure(path: str, matrix: np.ndarray, categories: Sequence[str],
                          pairs: List[Tuple[int, int, int]], title: str = '') -> None:
    """The row-normalised confusion matrix beside the list of most-confused pairs."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    num_class = len(categories)
    support = np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    fig, (ax, text_ax) = plt.subplots(1, 2, figsize=(13, 6), gridspec_kw={'width_ratios': [1, 1]})
    image = ax.imshow(matrix / support, cmap='Blues', vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, label='fraction of the true class')
    ax.set_xlabel('predicted class')
    ax.set_ylabel('true class')
    if num_class <= 20:
        short = [c if len(c) <= 28 else c[:27] + '…' for c in categories]
        ax.set_xticks(range(num_class), short, rotation=60, ha='right', fontsize=7)
        ax.set_yticks(range(num_class), short, fontsize=7)
        for i in range(num_class):
            for j in range(num_class):
                if matrix[i, j]:
                    ax.text(j, i, str(matrix[i, j]), ha='center', va='center', fontsize=7,
                            color='white' if matrix[i, j] / support[i, 0] > 0.5 else 'black')
    text_ax.axis('off')
    lines = [f'{n:3d}/{support[i, 0]:<3d}  {categories[i]}\n          -> {categories[j]}'
             for i, j, n in pairs] or ['no confusion']
    text_ax.text(0, 1, 'Most-confused pairs (videos / videos of the true class)\n\n'
                 + '\n'.join(lines), va='top', family='monospace', fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_write(path) as f:
        fig.savefig(f, dpi=110, format='png', bbox_inches='tight')
    plt.close(fig)


def write_error_analysis(score_file: str, scores: np.ndarray, labels: np.ndarray,
                         video_ids: Sequence[str], categories: Sequence[str],
                         scores_are_probabilities: bool = False) -> Dict[str, str]:
    """Write the files of the module docstring beside `score_file`; returns {name: path}.

    scores: (N, C) view-averaged scores; labels: (N,) true classes (videos labelled outside
    0..C-1, e.g. -1 for unknown, are left out of the matrix).
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    num_class = scores.shape[1]
    predictions = scores.argmax(axis=1)
    known = (labels >= 0) & (labels < num_class)
    matrix = confusion_matrix(labels[known], predictions[known], num_class)
    accuracy = per_class_accuracy(matrix)
    folder = os.path.splitext(score_file)[0] + '_analysis'
    paths = {kind: os.path.join(folder, kind) for kind in ('confusion.npz', 'confusion.csv',
                                                 'per_class.csv', 'top5.csv', 'confusion.png')}
    with atomic_write(paths['confusion.npz']) as f:
        np.savez(f, confusion=matrix, per_class_accuracy=accuracy,
                 categories=np.asarray(categories, dtype=str))
    with atomic_write(paths['confusion.csv']) as f:
        f.write(_csv_bytes([['true \\ predicted'] + list(categories)]
                           + [[c] + row.tolist() for c, row in zip(categories, matrix)]))
    support = matrix.sum(axis=1)
    with atomic_write(paths['per_class.csv']) as f:
        f.write(_csv_bytes([['class', 'videos', 'correct', 'accuracy']]
                           + [[c, int(s), int(d), '' if np.isnan(a) else f'{a:.2f}']
                              for c, s, d, a in zip(categories, support, np.diag(matrix),
                                                    accuracy)]))
    probabilities = scores if scores_are_probabilities else softmax(scores)
    k = min(5, num_class)
    top = np.argsort(-probabilities, axis=1, kind='stable')[:, :k]  # (N, k)
    header = ['video', 'label'] + [f'{c}{r}' for r in range(1, k + 1)
                                   for c in ('class', 'probability')]
    rows = [[v, categories[y] if 0 <= y < num_class else '']
            + [x for j in t for x in (categories[j], f'{p[j]:.6f}')]
            for v, y, t, p in zip(video_ids, labels, top, probabilities)]
    with atomic_write(paths['top5.csv']) as f:
        f.write(_csv_bytes([header] + rows))
    correct = int(np.trace(matrix))
    save_confusion_figure(paths['confusion.png'], matrix, categories, most_confused(matrix),
                          f'{os.path.basename(score_file)}: {correct}/{int(known.sum())} correct')
    return paths


# Calibration: how far a model's confidence is from its accuracy. The confidence of a video is
# its largest class probability: the softmax of its view-averaged logits (a score file holds
# those logits unless test.py ran with --softmax, when it holds that softmax already).
# write_calibration adds to the analysis folder of a score file:
#     calibration.json  expected calibration error (ece, in [0, 1]) and the confidence bins
#     reliability.png   accuracy against confidence per bin, and the share of videos per bin
CALIBRATION_BINS = 15  # equal-width confidence bins over [0, 1], as Guo et al. (2017)


def calibration_bins(probabilities: np.ndarray, labels: np.ndarray,
                     num_bins: int = CALIBRATION_BINS) -> List[Dict]:
    """Per confidence bin ``(k / num_bins, (k + 1) / num_bins]``: {'low', 'high', 'videos',
    'confidence' (mean), 'accuracy'} (the last two None for an empty bin).

    probabilities: (N, C) rows summing to 1; labels: (N,) true classes.
    """
    confidence = probabilities.max(axis=1)
    right = probabilities.argmax(axis=1) == labels
    index = np.clip(np.ceil(confidence * num_bins).astype(np.int64) - 1, 0, num_bins - 1)
    bins = []
    for k in range(num_bins):
        members = index == k
        count = int(members.sum())
        bins.append({'low': k / num_bins, 'high': (k + 1) / num_bins, 'videos': count,
                     'confidence': float(confidence[members].mean()) if count else None,
                     'accuracy': float(right[members].mean()) if count else None})
    return bins


def expected_calibration_error(bins: List[Dict]) -> float:
    """ECE in [0, 1]: the video-weighted mean over bins of |accuracy - mean confidence|."""
    total = sum(b['videos'] for b in bins)
    return sum(b['videos'] / total * abs(b['accuracy'] - b['confidence'])
               for b in bins if b['videos'])


def save_reliability_diagram(path: str, bins: List[Dict], ece: float, title: str = '') -> None:
    """Accuracy against confidence per bin (bars) beside the diagonal of a calibrated model,
    with the share of videos per bin below."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    width = bins[0]['high'] - bins[0]['low']
    centres = [(b['low'] + b['high']) / 2 for b in bins]
    accuracy = [b['accuracy'] or 0.0 for b in bins]
    total = max(sum(b['videos'] for b in bins), 1)
    fig, (ax, count_ax) = plt.subplots(2, 1, figsize=(5, 6), sharex=True,
                                       gridspec_kw={'height_ratios': [3, 1]})
    ax.bar(centres, accuracy, width=width, edgecolor='black', color='tab:blue', label='accuracy')
    gaps = [(c, b['confidence'], b['accuracy']) for c, b in zip(centres, bins) if b['videos']]
    ax.bar([c for c, _, _ in gaps], [conf - acc for _, conf, acc in gaps], width=width,
           bottom=[acc for _, _, acc in gaps], color='tab:red', alpha=0.3,
           label='gap to mean confidence')
    ax.plot([0, 1], [0, 1], '--', color='gray', label='calibrated')
    ax.set_ylim(0, 1)
    ax.set_ylabel('accuracy')
    ax.legend(loc='upper left', fontsize=8)
    ax.set_title(f'{title}\nECE {100 * ece:.2f}% ({len(bins)} bins)', fontsize=9)
    count_ax.bar(centres, [b['videos'] / total for b in bins], width=width, color='gray')
    count_ax.set_xlim(0, 1)
    count_ax.set_xlabel('confidence (largest class probability)')
    count_ax.set_ylabel('share of videos')
    fig.tight_layout()
    with atomic_write(path) as f:
        fig.savefig(f, dpi=110, format='png', bbox_inches='tight')
    plt.close(fig)


def write_calibration(score_file: str, scores: np.ndarray, labels: np.ndarray,
                      scores_are_probabilities: bool = False,
                      num_bins: int = CALIBRATION_BINS) -> Dict:
    """Write ``calibration.json`` (ECE, the bins) and ``reliability.png`` into the analysis
    folder of `score_file`, over its labelled videos (labels 0..C-1); returns {'ece', 'bins',
    'videos', 'json', 'png'}. `scores`: (N, C) view-averaged logits, or their softmax when
    `scores_are_probabilities` (test.py --softmax)."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    known = (labels >= 0) & (labels < scores.shape[1])
    probabilities = scores if scores_are_probabilities else softmax(scores)
    bins = calibration_bins(probabilities[known], labels[known], num_bins)
    ece = expected_calibration_error(bins)
    folder = os.path.splitext(score_file)[0] + '_analysis'
    paths = {'json': os.path.join(folder, 'calibration.json'),
             'png': os.path.join(folder, 'reliability.png')}
    record = {'ece': ece, 'num_bins': num_bins, 'videos': int(known.sum()),
              'confidence': 'largest class probability: ' + (
                  "the score file's scores (test.py --softmax)" if scores_are_probabilities
                  else "softmax of the score file's view-averaged logits"),
              'bins': bins}
    with atomic_write(paths['json'], 'w') as f:
        json.dump(record, f, indent=1)
    save_reliability_diagram(paths['png'], bins, ece, os.path.basename(score_file))
    return {**record, **paths}
