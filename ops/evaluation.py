"""Multi-view evaluation and score files, shared by test.py and average_scores.py.

A score file (npz) holds, for every video of a list, the class scores averaged over its
views (crops x clips): ``scores`` (N, num_class), ``labels`` (N,), ``predictions`` (N,),
``video_ids`` (N,), plus the settings that produced it (``weights``, ``list_file``, ...).
Its name says dataset, model, frames, crops, clips and size; test.py refuses to replace a
score file of another checkpoint or list unless --overwrite (check_score_file_free).
"""
import logging
import os
import time
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from ops.checkpoint import unwrap_model
from ops.errors import UserError
from ops.utils import accuracy, atomic_write, class_accuracy, progress, throughput

logger = logging.getLogger('masnet')

DEFAULT_SCORE_DIR = 'score'


class ScoreFileError(UserError):
    """Score files that cannot be read or do not describe the same videos."""


def score_filename(dataset: str, temporal_type: str, arch: str, segments: int, crops: int,
                   clips: int, size: int) -> str:
    return f'{dataset}_{temporal_type}_{arch}_{segments}f_{crops}crop_{clips}clip_{size}px.npz'


def save_scores(path, scores, labels, video_ids, **settings):
    """Write a score file atomically."""
    scores = np.asarray(scores, dtype=np.float32)
    with atomic_write(path) as f:
        np.savez(f, scores=scores, labels=np.asarray(labels, dtype=np.int64),
                 predictions=scores.argmax(axis=1), video_ids=np.asarray(video_ids, dtype=str),
                 **{k: np.asarray(v) for k, v in settings.items()})


def load_scores(path: str) -> Dict:
    """``{'scores' (N, C), 'labels', 'video_ids', ...}`` of a score file.

    Score files of the release (scores ``(N, 1, C)``, no ``video_ids``) are accepted: their
    scores are squeezed to ``(N, C)`` and ``video_ids`` is None, so they are matched to other
    files by position (and labels).
    """
    if os.path.isfile(path):
        with open(path, 'rb') as f:
            if f.read(4) != b'PK\x03\x04':
                raise ScoreFileError(f"score file '{path}' is not an npz file (empty or another "
                                     f"format)")
    try:
        with np.load(path, allow_pickle=False) as data:
            loaded = {k: data[k] for k in data.files}
    except Exception as exc:  # missing, empty, truncated, not an npz, ...
        message = f'{type(exc).__name__}: {exc}'.splitlines()[0]
        raise ScoreFileError(f"score file '{path}' cannot be read ({message})") from None
    if not isinstance(loaded, dict):
        raise ScoreFileError(f"score file '{path}' is a .npy array, not an npz score file")
    missing = [k for k in ('scores', 'labels') if k not in loaded]
    if missing:
        raise ScoreFileError(f"score file '{path}' lacks {', '.join(missing)}")
    scores = loaded['scores']
    if scores.ndim == 3 and scores.shape[1] == 1:  # the release's (N, 1, C)
        scores = scores[:, 0]
    if scores.ndim != 2 or scores.shape[0] != len(loaded['labels']):
        raise ScoreFileError(f"score file '{path}': scores of shape {loaded['scores'].shape} "
                             f"for {len(loaded['labels'])} labels")
    loaded['scores'] = scores
    loaded.setdefault('video_ids', None)
    return loaded


def check_score_file_free(path, weights, list_file, overwrite=False):
    """Refuse to replace the score file `path` when it holds the scores of another checkpoint
    or list (unless `overwrite`); the same evaluation run again may replace its own file."""
    if overwrite or not os.path.exists(path):
        return
    try:
        with np.load(path, allow_pickle=False) as data:
            old_weights = str(data['weights']) if 'weights' in data.files else None
            old_list = str(data['list_file']) if 'list_file' in data.files else None
    except Exception:
        old_weights = old_list = '(unreadable file)'
    same_weights = old_weights is not None and _same_file(old_weights, weights)
    same_list = old_list is None or _same_file(old_list, list_file)
    if not (same_weights and same_list):
        raise ScoreFileError(f"score file '{path}' holds the scores of '{old_weights}' on "
                             f"'{old_list}': pass --overwrite to replace it, or --save_scores "
                             f"with another folder")


def _same_file(a, b):
    return os.path.realpath(a) == os.path.realpath(b)


def softmax(scores):
    shifted = scores - scores.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=1, keepdims=True)


def check_same_videos(score_sets, paths):
    """Refuse score files whose video ids, labels or class counts disagree (files without
    video ids, the release's, are matched by position)."""
    ref, ref_path = score_sets[0], paths[0]
    for data, path in zip(score_sets[1:], paths[1:]):
        if data['scores'].shape != ref['scores'].shape:
            raise ScoreFileError(f"score files '{ref_path}' and '{path}' disagree in shape: "
                                 f"{ref['scores'].shape} vs {data['scores'].shape}")
        have_ids = data['video_ids'] is not None and ref['video_ids'] is not None
        if have_ids and not np.array_equal(data['video_ids'], ref['video_ids']):
            raise ScoreFileError(f"score files '{ref_path}' and '{path}' list different videos")
        if not np.array_equal(data['labels'], ref['labels']):
            raise ScoreFileError(f"score files '{ref_path}' and '{path}' disagree in labels")


def ensemble(score_list: List[np.ndarray], weights: Optional[List[float]] = None,
             use_softmax: bool = False) -> np.ndarray:
    """Weighted sum of score arrays (N, num_class), softmax-normalised first if asked."""
    weights = [1.0] * len(score_list) if weights is None else list(weights)
    if len(weights) != len(score_list):
        raise ScoreFileError(f'{len(weights)} weights for {len(score_list)} score files')
    total = 0.0
    for scores, weight in zip(score_list, weights):
        total = total + weight * (softmax(scores) if use_softmax else scores)
    return total


def summarize(scores, labels) -> Tuple[float, float, float]:
    """(top-1, top-5, mean class accuracy) in percent."""
    scores = torch.as_tensor(np.asarray(scores))
    labels = np.asarray(labels)
    top1, top5 = accuracy(scores, torch.as_tensor(labels), topk=(1, 5))
    _, mean_class = class_accuracy(labels, scores.argmax(dim=1).numpy(), scores.shape[1])
    return top1, top5, mean_class


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
    start, seen = time.time(), 0
    for batch, batches in enumerate(zip(*loaders), start=1):
        labels = batches[0][1]
        for k, (model, (clips, _), segments) in enumerate(zip(models, batches, num_segments)):
            n = clips.size(0)
            clips = clips.to(device).view(-1, segments * 3, *clips.shape[-2:])  # (N*V, T*3, H, W)
            scores = model(clips).float().view(n, -1, unwrap_model(model).num_class)  # (N, V, C)
            scores = scores.mean(dim=1)  # (N, C): the views' logits averaged
            if use_softmax:  # as the release and TSM: softmax of the averaged logits
                scores = scores.softmax(dim=1)
            outputs[k].append(scores.cpu())
        all_labels.append(labels)
        bar.update(labels.size(0))
        seen += labels.size(0)
        if bar.disable and (batch % log_every == 0 or batch == len(loaders[0])):
            logger.info(f'test: {throughput(seen, start, total, unit="videos")}')
    bar.close()
    return [torch.cat(o).numpy() for o in outputs], torch.cat(all_labels).numpy()
