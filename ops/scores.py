"""Score files and what is computed from scores, shared by test.py and average_scores.py.

A score file (npz) holds, for every video of a list, the class scores averaged over its
views (crops x clips) in the release's layout: ``scores`` (N, 1, num_class), ``labels`` (N,),
``predictions`` (N,) and ``cf`` (scikit-learn's confusion matrix of the labelled videos, over
the classes that occur in their labels or predictions, as the release's test.py writes it);
plus ``cf_classes`` (the classes of cf's rows and columns), ``video_ids`` (N,), ``categories``
and the settings that produced it (``weights``, ``list_file``, ``dataset``, views, ``softmax``,
``frame_order``, ...; see ops/run_eval.py). Label -1 marks a video of an unlabelled list: it
has a prediction and no accuracy. load_scores also reads this project's earlier files (scores
(N, num_class)).
Its name says dataset, model, frames, crops, clips and size; test.py replaces a score file only
with the scores of the same evaluation (check_score_file_free) and holds the file's lock
(lock_score_file) from that check to the write. load_scores refuses non-finite scores and
check_weights ensemble weights outside their domain. Files of another frame order (test.py
--frame_order) are of another evaluation group: average_scores.py never mixes them with forward
ones. Ensembles, accuracies and softmax of score arrays are here too.
"""
import hashlib
import os
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from ops.errors import FlagError, UserError
from ops.files import atomic_write
from ops.meters import accuracy, class_accuracy
from ops.run_folder import LockBusy, hold_lock

DEFAULT_SCORE_DIR = 'score'
UNLABELLED = -1
PATH_SETTINGS = ('weights', 'list_file')  # compared as the files they name
# the value of a setting in the files written before it was recorded (and the release's)
SETTING_DEFAULTS = {'frame_order': 'forward'}


class ScoreFileError(UserError):
    """Score files that cannot be read or do not describe the same videos."""


def score_filename(dataset: str, temporal_type: str, arch: str, segments: int, crops: int,
                   clips: int, size: int, tag: str = '') -> str:
    """This project's score file name; `tag` (ViewProtocol.name_tag) names a sampling other
    than the release's."""
    return (f'{dataset}_{temporal_type}_{arch}_{segments}f_{crops}crop_{clips}clip_{size}px'
            f'{tag}.npz')


def release_score_filename(dataset: str, segments: int, crops: int, clips: int,
                           size: int) -> str:
    """The release's score file name (its test.py writes, its average_scores.py reads
    ``experiments/test/EN/<this>``): ``<dataset>_segment<T>_crops<C>_clips<K>_shape<S>.npz``,
    S the crop side (256 with --full_res at 224)."""
    return f'{dataset}_segment{segments}_crops{crops}_clips{clips}_shape{size}.npz'


def release_confusion_matrix(labels, predictions) -> Tuple[np.ndarray, np.ndarray]:
    """(cf, classes): the release's ``confusion_matrix(labels, predictions).astype(float)``
    (scikit-learn's) of the labelled videos: rows true, columns predicted classes, both over
    the sorted classes that occur in either."""
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    known = labels != UNLABELLED
    classes = np.union1d(labels[known], predictions[known]).astype(np.int64)
    cf = np.zeros((len(classes), len(classes)))
    np.add.at(cf, (np.searchsorted(classes, labels[known]),
                   np.searchsorted(classes, predictions[known])), 1)
    return cf, classes


def save_scores(path, scores, labels, video_ids, **settings):
    """Write a score file atomically; `scores` (N, num_class) are stored as (N, 1, num_class)."""
    scores = np.asarray(scores, dtype=np.float32)
    labels = np.asarray(labels, dtype=np.int64)
    predictions = scores.argmax(axis=1)
    cf, cf_classes = release_confusion_matrix(labels, predictions)
    with atomic_write(path) as f:
        np.savez(f, scores=scores[:, None, :], labels=labels, predictions=predictions, cf=cf,
                 cf_classes=cf_classes, video_ids=np.asarray(video_ids, dtype=str),
                 **{k: np.asarray(v) for k, v in settings.items()})


def load_scores(path: str) -> Dict:
    """``{'scores' (N, C), 'labels', 'video_ids', ...}`` of a score file.

    The release's layout (scores ``(N, 1, C)``, this code's since the score files have its
    keys) is squeezed to ``(N, C)``; files without ``video_ids`` (the release's) get None and
    are matched to other files by position (and labels).
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
    bad = ~np.isfinite(scores)
    if bad.any():
        raise ScoreFileError(f"score file '{path}' holds {int(bad.sum())} non-finite score "
                             f"value(s) (NaN or inf) in {int(bad.any(axis=1).sum())} of "
                             f"{len(scores)} video(s): no accuracy or ensemble is made of them")
    loaded['scores'] = scores
    loaded.setdefault('video_ids', None)
    return loaded


def lock_score_file(path):
    """Hold the lock of score file `path` (``<path>.lock``) until the returned file is closed.

    A second test.py writing the same file refuses at once rather than waiting: its
    evaluation would either repeat the running one or replace its file.
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    try:
        return hold_lock(path + '.lock')
    except LockBusy as busy:
        raise ScoreFileError(f"score file '{path}' is being written by another test.py "
                             f"({busy.holder}); wait for it to end or pass --save_scores with "
                             f"another folder") from None


def _setting(value):
    """A setting as a plain Python value (npz files hold 0-d arrays)."""
    return np.asarray(value).item()


def check_score_file_free(path, weights, list_file, overwrite=False, **settings):
    """Refuse to replace the score file `path` unless it holds the scores of the same
    evaluation: the same checkpoint and list, and the same value of every setting in
    `settings` (views, softmax, max_num, ...; a setting the file does not record counts as
    different, but for those of SETTING_DEFAULTS, which older files hold at that value).
    `overwrite` replaces any file."""
    if overwrite or not os.path.exists(path):
        return
    wanted = dict(weights=weights, list_file=list_file, **settings)
    try:
        with np.load(path, allow_pickle=False) as data:
            old = {k: _setting(data[k]) for k in wanted if k in data.files}
        old = {**{k: v for k, v in SETTING_DEFAULTS.items() if k in wanted}, **old}
    except Exception:
        old = {}
    differing = []
    for key, value in wanted.items():
        if key not in old:
            differing.append(f'{key}: not recorded there, {_setting(value)} here')
        elif key in PATH_SETTINGS:
            if os.path.realpath(str(old[key])) != os.path.realpath(str(value)):
                differing.append(f'{key}: {old[key]} there, {value} here')
        elif old[key] != _setting(value):
            differing.append(f'{key}: {old[key]} there, {_setting(value)} here')
    if differing:
        raise ScoreFileError(f"score file '{path}' holds the scores of "
                             f"'{old.get('weights')}' on '{old.get('list_file')}' with other "
                             f"settings ({'; '.join(differing)}): pass --overwrite to replace "
                             f"it, or --save_scores with another folder")


def frame_order(data: Dict) -> str:
    """The frame order of a loaded score file's clips (files without the record: forward)."""
    return str(data.get('frame_order', SETTING_DEFAULTS['frame_order']))


def evaluation_group(data: Dict) -> Tuple:
    """What a score file's scores are comparable on: dataset, list, class count, videos and
    the frame order of their clips.

    Files without this record (the release's, this project's earlier ones) are grouped by
    what they hold: class count, video count and labels.
    """
    def digest(array):
        return hashlib.sha1(np.ascontiguousarray(array).tobytes()).hexdigest()[:12]

    def recorded(key):
        return str(data[key]) if key in data else None

    videos = data['video_ids']
    return (recorded('dataset'), recorded('list_file'), data['scores'].shape[1],
            len(data['labels']), digest(data['labels']),
            None if videos is None else digest(np.asarray(videos, dtype=str)), frame_order(data))


def describe_group(group: Tuple) -> str:
    dataset, list_file, num_class, num_videos = group[:4]
    where = f"dataset {dataset}, list {list_file}, " if dataset or list_file else ''
    order = '' if group[-1] == 'forward' else f', frames {group[-1]}'
    return f'{where}{num_class} classes, {num_videos} videos{order}'


def softmax(scores):
    shifted = scores - scores.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=1, keepdims=True)


def check_same_videos(score_sets, paths):
    """Refuse score files whose video ids, labels, class counts or frame orders disagree
    (files without video ids, the release's, are matched by position)."""
    ref, ref_path = score_sets[0], paths[0]
    for data, path in zip(score_sets[1:], paths[1:]):
        if frame_order(data) != frame_order(ref):
            raise ScoreFileError(f"score files '{ref_path}' and '{path}' are of clips in other "
                                 f"frame orders ({frame_order(ref)} vs {frame_order(data)}): "
                                 f"their scores are not averaged together")
        if data['scores'].shape != ref['scores'].shape:
            raise ScoreFileError(f"score files '{ref_path}' and '{path}' disagree in shape: "
                                 f"{ref['scores'].shape} vs {data['scores'].shape}")
        have_ids = data['video_ids'] is not None and ref['video_ids'] is not None
        if have_ids and not np.array_equal(data['video_ids'], ref['video_ids']):
            raise ScoreFileError(f"score files '{ref_path}' and '{path}' list different videos")
        if not np.array_equal(data['labels'], ref['labels']):
            raise ScoreFileError(f"score files '{ref_path}' and '{path}' disagree in labels")


def check_weights(weights, flag='--weights', allow_negative=False):
    """Refuse ensemble weights outside their domain, naming `flag`: a NaN or inf, a sum of
    zero (the ensemble would be all zeros, its argmax class 0) and, unless `allow_negative`,
    a negative weight."""
    weights = np.asarray(weights, dtype=np.float64)
    if not np.isfinite(weights).all():
        raise FlagError(f'{flag} {_listed(weights)}: every weight must be a finite number')
    if weights.sum() == 0:
        raise FlagError(f'{flag} {_listed(weights)}: the weights sum to zero, which leaves no '
                        f'ensemble')
    if not allow_negative and (weights < 0).any():
        raise FlagError(f'{flag} {_listed(weights)}: a negative weight subtracts a model\'s '
                        f'scores; pass --allow_negative_weights if that is meant')


def _listed(weights):
    return ' '.join(f'{w:g}' for w in weights)


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


def summarize(scores, labels) -> Optional[Tuple[float, float, float]]:
    """(top-1, top-5, mean class accuracy) in percent over the labelled videos (label -1:
    unknown, left out); None when no video is labelled."""
    scores = np.asarray(scores)
    labels = np.asarray(labels)
    known = labels != UNLABELLED
    if not known.any():
        return None
    scores = torch.as_tensor(scores[known])
    labels = labels[known]
    top1, top5 = accuracy(scores, torch.as_tensor(labels), topk=(1, 5))
    _, mean_class = class_accuracy(labels, scores.argmax(dim=1).numpy(), scores.shape[1])
    return top1, top5, mean_class


def describe_labels(labels) -> str:
    """'' for a labelled list; else a note on its unlabelled videos (for the result lines)."""
    unknown = int(np.sum(np.asarray(labels) == UNLABELLED))
    if unknown == 0:
        return ''
    if unknown == len(labels):
        return f'the list is unlabelled (label -1): {len(labels)} predictions, no accuracy'
    return f'{unknown} of {len(labels)} videos unlabelled (label -1): accuracy over the other ' \
           f'{len(labels) - unknown}'
