"""TSN-style video dataset: list files, segment sampling, frame / video decoding.

List grammar (every tool reads lists through parse_list_file): one video per line,
``<path> <label>`` or ``<path> <num_frames> <label>``. The path is a frame folder (frames
numbered from 1) or a video file, decoded on the fly by a reader of ops.video_readers
(``--video_backend``); a count of ``-`` (or none) is unknown, a label of ``-1`` is unknown
(unlabelled lists: predict.py, and test.py where it allows them). The last field is the label,
the one before it the count when it is a number or ``-``, and the rest of the line is the path,
so paths may hold spaces (a path whose last word is a number needs the count field: ``a 12 - 3``).

Unknown counts are counted once, in the process that loads the list, before any loader is built
(fill_frame_counts), and kept in the list's FrameCountCache (``<list>.frames``), so no epoch,
loader worker or later run counts them again.

Sampling (T = num_segments, n = frames of the video, indices 1-based):
    train  d = n // T; d > 0: i*d + randint(d); n > T: sorted random distinct picks;
           else the n frames spread evenly over T.
    val    tick = n / T, int(tick/2 + tick*i).
    dense  train/val: an I3D-style 64-frame window with stride 64 // T (random / central start).
Test samplings (TEST_SAMPLINGS, one registered function per clip each; test.py / predict.py
--test_sampling, or the release's --twice_sample / --dense_sample):
    center the val indices (1 clip).
    twice  the val indices, then int(tick*i) (2 clips).
    dense  K clips, integer starts linspace(0, tick-1, K, dtype=int), int(tick*i + start).
    random K clips, int(tick*i + u*tick) with u uniform in [0, 1) per clip, seeded by
           --test_seed and the video's path (video_rng): the same clips in every run.
Frame orders (FRAME_ORDERS, --frame_order): forward (as sampled), reversed (each clip's T
frames last to first) or shuffled (each clip's T frames in a random order, seeded by
--test_seed and the video's path): the same frames and views in another order, to measure
whether a model uses time (test.py --temporal_sensitivity).
A ViewProtocol (crops, full resolution, sampling, clips, order, seed, softmax) is the one value
of the test-time views: the dataset's test mode, the evaluation, the Recognizer and the score
file's settings all read it.

Bad input policy: a missing or corrupt frame is logged and replaced by the nearest readable
frame of the same video (a listed count larger than the video is named in the warning). A
video with no readable frame is logged and, in training, replaced by another random video
(counted in ``num_replaced``; after MAX_REPLACEMENTS in a row the run stops with one line); in
evaluation it is an error naming the video, since scores of a substitute would be silently
wrong. ``load_checked_list`` checks a list before any epoch: labels in range, every video
present (an error naming ``file:line``; for a training list only a warning unless none is
present), and a readable first video among the first few.

Loaders: make_loader builds the DataLoader of every command (WatchedLoader). Its workers decode
on one thread each (no decoder or converter thread state crosses the fork), ignore SIGTERM /
SIGUSR1 (the main process handles a stop: ops.preemption) and note the video they read, so a
loader that yields no batch for --loader_timeout seconds ends the run with one line naming that
video and its backend instead of stalling silently.
"""
import contextlib
import dataclasses
import functools
import hashlib
import inspect
import logging
import multiprocessing
import os
import random
import re
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

import numpy as np
from torch.utils.data import DataLoader, Dataset

from ops.errors import FlagError, UserError
from ops.files import atomic_write
from ops.preemption import Preempted, ignore_stop_signals, stop_pending, stop_signals_blocked
from ops.video_readers import (
    VIDEO_EXTENSIONS,
    FolderReader,
    VideoReadError,
    open_reader,
    resolve_backend,
    single_threaded_decoders,
)

logger = logging.getLogger('masnet.data')

DENSE_WINDOW = 64
MAX_REPLACEMENTS = 20  # unreadable training videos in a row before the run stops
PROBE_VIDEOS = 5  # videos of each list decoded before training
UNKNOWN_LABEL = -1
UNKNOWN_COUNT = '-'
# '<path> [<num_frames>|-] <label>': the path is the rest of the line, so it may hold spaces
LIST_LINE = re.compile(r'(?P<path>\S.*?)(?:\s+(?P<frames>\d+|-))?\s+(?P<label>-?\d+)')
LIST_GRAMMAR = "'<path> <label>' or '<path> <num_frames|-> <label>', label -1 if unknown"
# a word that reads as a number but is no frame count (12.5, -3, 1e3): a mistyped count
NUMBER = re.compile(r'[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?')
COUNT_THREADS = 8  # videos counted at once (decoders release the GIL)
CACHE_SAVE_SECONDS = 30  # a long count saves the counts found so far this often
# seconds a loader with workers may yield no batch before the run stops (--loader_timeout);
# far above any batch's decoding time, well below a day's silent stall
LOADER_TIMEOUT = 600


class DataError(UserError):
    """A list file or video that cannot be used."""


class TemplateError(DataError):
    """Frame folders named with another template than the dataset's (never replaced in
    training: every video would fail)."""


class VideoRecord:
    """One line of a list file."""

    def __init__(self, path, num_frames, label, line_no=None):
        self.path = path
        self.num_frames = num_frames  # None: unknown ('-' or a 2-field line), counted once
        self.label = label
        self.line_no = line_no  # line in the list file

    @property
    def is_video_file(self) -> bool:
        return self.path.lower().endswith(VIDEO_EXTENSIONS)


def parse_list_line(line: str) -> Tuple[str, Optional[int], int]:
    """(path, num_frames or None, label) of one list line (see the module docstring).

    Raises ValueError saying what is wrong.
    """
    match = LIST_LINE.fullmatch(line.strip())
    if not match:
        raise ValueError(f'want {LIST_GRAMMAR}')
    path, frames = match.group('path'), match.group('frames')
    last_word = path.split()[-1]
    if frames is None and len(path.split()) > 1 and NUMBER.fullmatch(last_word):
        raise ValueError(f"num_frames '{last_word}' is not a whole number >= 1 (a path whose "
                         f"last word is a number needs the count field: '<path> - <label>')")
    frames = None if frames in (None, UNKNOWN_COUNT) else int(frames)
    if frames is not None and frames < 1:
        raise ValueError('num_frames must be >= 1 (or - if unknown)')
    return path, frames, int(match.group('label'))


def parse_list_file(list_file: str) -> List['VideoRecord']:
    """VideoRecords of `list_file` (UTF-8, with or without a byte order mark); a malformed line
    raises DataError naming file and line."""
    if not os.path.isfile(list_file):
        raise DataError(f"list file '{list_file}' does not exist")
    records = []
    with open(list_file, 'rb') as f:
        for line_no, raw in enumerate(f, start=1):
            try:
                line = raw.decode('utf-8-sig' if line_no == 1 else 'utf-8')
            except UnicodeDecodeError:
                raise DataError(f"{list_file}:{line_no}: not UTF-8 text "
                                "(is it a list file?)") from None
            if not line.strip():
                continue
            try:
                path, frames, label = parse_list_line(line)
            except ValueError as exc:
                raise DataError(f"{list_file}:{line_no}: cannot parse '{line.strip()[:80]}' "
                                f"({exc})") from None
            records.append(VideoRecord(path, frames, label, line_no))
    if not records:
        raise DataError(f"list file '{list_file}' holds no video")
    return records


def check_labels(records: List['VideoRecord'], list_file: str, num_class: int,
                 allow_unlabelled: bool = False) -> None:
    """Refuse a label outside [0, num_class), naming the list file and line; the unknown label
    -1 passes only when `allow_unlabelled` (evaluation without accuracy, prediction)."""
    for record in records:
        if record.label == UNKNOWN_LABEL and allow_unlabelled:
            continue
        if not 0 <= record.label < num_class:
            hint = (' (-1: an unlabelled list, which training cannot use)'
                    if record.label == UNKNOWN_LABEL else '')
            raise DataError(f"{list_file}:{record.line_no}: label {record.label} of "
                            f"'{record.path}' is not in [0, {num_class}){hint}")


def missing_videos(records: List['VideoRecord'], root_path: str) -> List['VideoRecord']:
    """The records whose frame folder / video file is absent below `root_path`.

    One os.listdir per distinct parent folder (not one stat per video), so 200k-video lists
    take seconds at most.
    """
    entries, missing = {}, []
    for record in records:
        parent, name = os.path.split(os.path.normpath(os.path.join(root_path, record.path)))
        if parent not in entries:
            try:
                entries[parent] = set(os.listdir(parent))
            except OSError:
                entries[parent] = frozenset()
        if name not in entries[parent]:
            missing.append(record)
    return missing


def cache_folder() -> str:
    """Where a list in a read-only folder keeps its frame count cache."""
    base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
    return os.path.join(base, 'masnet', 'frame_counts')


def video_stamp(path: str) -> Tuple[int, int]:
    """(size, mtime in ns) of a video file or frame folder: a cached count holds while it holds."""
    stat = os.stat(path)
    return stat.st_size, stat.st_mtime_ns


class FrameCountCache:
    """Frame counts of the videos of a list whose count is unknown, kept beside the list.

    The file is ``<list file>.frames``: a header line, then ``<count> <size> <mtime_ns> <path>``
    per video (the path last: it may hold spaces). A count is used only while its video file /
    frame folder keeps the size and mtime it was counted with. The file is replaced atomically
    (ops.files.atomic_write); a list in a read-only folder keeps it in cache_folder() instead,
    and if that fails too the counts stay in memory (one warning). A cache file that does not
    parse is ignored with a warning and rewritten.
    """

    SUFFIX = '.frames'
    HEADER = '# masnet frame counts 1: <count> <size> <mtime_ns> <path>'

    def __init__(self, list_file: str):
        self.beside = list_file + self.SUFFIX
        digest = hashlib.sha1(os.path.abspath(list_file).encode()).hexdigest()[:16]
        self.fallback = os.path.join(cache_folder(),
                                     f'{digest}_{os.path.basename(list_file)}{self.SUFFIX}')
        self.path = self.beside if os.path.isfile(self.beside) or \
            not os.path.isfile(self.fallback) else self.fallback
        self.entries: Dict[str, Tuple[int, int, int]] = {}
        self.in_memory = False
        if os.path.isfile(self.path):
            self._load()

    def _load(self):
        try:
            with open(self.path, encoding='utf-8') as f:
                lines = f.read().splitlines()
            if not lines or lines[0] != self.HEADER:
                raise ValueError('no frame count header')
            for line in lines[1:]:
                count, size, mtime, video = line.split(' ', 3)  # (ValueError if fewer)
                self.entries[video] = (int(count), int(size), int(mtime))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            self.entries = {}
            logger.warning("frame count cache '%s' is unreadable (%s): ignored, the videos are "
                           "counted again", self.path, exc)

    def get(self, video: str, stamp: Tuple[int, int]) -> Optional[int]:
        """The cached count of `video` if it was counted with this (size, mtime), else None."""
        entry = self.entries.get(video)
        return entry[0] if entry is not None and entry[1:] == stamp else None

    def put(self, video: str, count: int, stamp: Tuple[int, int]) -> None:
        self.entries[video] = (count, *stamp)

    def save(self) -> None:
        """Write the counts beside the list, else in cache_folder(), else keep them in memory."""
        if self.in_memory:
            return
        text = self.HEADER + '\n' + ''.join(f'{count} {size} {mtime} {video}\n' for video,
                                            (count, size, mtime) in self.entries.items())
        problems = []
        for path in (self.beside, self.fallback):
            try:
                with atomic_write(path) as f:
                    f.write(text.encode('utf-8'))
                self.path = path
                return
            except OSError as exc:
                problems.append(str(exc))
        self.in_memory = True
        logger.warning("frame counts kept in memory only (%s): every run counts again",
                       '; '.join(problems))


def fill_frame_counts(records: List['VideoRecord'], root_path: str, list_file: str,
                      image_tmpl: str = '{:05d}.jpg', video_backend: str = 'auto') -> None:
    """Give each record of unknown count its frame count, in this process, before any loader.

    The count comes from the list's FrameCountCache while the video is unchanged, else it is
    counted now (COUNT_THREADS videos at once) and the cache is written (every
    CACHE_SAVE_SECONDS during a long count, and at the end). Under torchrun only rank 0 writes
    the cache; the other ranks count in memory (no barrier: a first count may take longer than
    a collective's timeout). A missing or unreadable video keeps no count: reading it fails
    later as the bad-data policy says.
    """
    todo = [r for r in records if r.num_frames is None]
    if not todo:
        return
    writes = int(os.environ.get('RANK', '0')) == 0
    cache = FrameCountCache(list_file)
    uncounted = []  # (record, path, stamp)
    for record in todo:
        path = os.path.join(root_path, record.path)
        try:
            stamp = video_stamp(path)
        except OSError:
            continue  # missing: load_checked_list / the dataset say so
        record.num_frames = cache.get(record.path, stamp)
        if record.num_frames is None:
            uncounted.append((record, path, stamp))
    if not uncounted:
        return
    try:
        backend = resolve_backend(video_backend)
    except VideoReadError as exc:
        raise DataError(str(exc)) from None

    def count(item):
        record, path, _ = item
        try:
            with open_reader(path, record.is_video_file, image_tmpl, backend) as reader:
                return reader.count()
        except (VideoReadError, OSError):
            return 0

    logger.info("counting the frames of %d videos of '%s' (once: kept in '%s')", len(uncounted),
                list_file, cache.path)
    saved = time.monotonic()
    with ThreadPoolExecutor(COUNT_THREADS) as pool:
        for (record, _, stamp), frames in zip(uncounted, pool.map(count, uncounted)):
            if frames > 0:
                record.num_frames = frames
                cache.put(record.path, frames, stamp)
            if writes and time.monotonic() - saved > CACHE_SAVE_SECONDS:
                cache.save()
                saved = time.monotonic()
    if writes:
        cache.save()


def load_checked_list(list_file: str, root_path: str, num_class: Optional[int],
                      image_tmpl: str, missing: str = 'error', video_backend: str = 'auto',
                      allow_unlabelled: bool = False, probe_first: bool = True,
                      root_flag: str = '--dataset_path') -> List['VideoRecord']:
    """The VideoRecords of `list_file`, checked before any epoch (see the module docstring),
    with the frame counts of its ``-`` entries filled in (fill_frame_counts).

    missing: 'error' (validation / test lists: a missing video would cost a whole epoch or
        bias the scores) or 'warn' (training lists: missing videos are replaced by others,
        as unreadable ones are; an error only if no video is present).
    allow_unlabelled: accept the unknown label -1 (evaluation that only writes predictions);
        training never does.
    num_class None: no label check (a list read before the model's classes are known).
    probe_first: decode one of the first PROBE_VIDEOS videos (off where the frame template
        is only guessed later, as the Recognizer does).
    root_flag: the flag that sets `root_path`, for the message on missing videos.
    Raises DataError naming the file and line of the first problem.
    """
    records = parse_list_file(list_file)
    if num_class is not None:
        check_labels(records, list_file, num_class, allow_unlabelled)
    absent = missing_videos(records, root_path)
    if absent:
        first = absent[0]
        where = (f"{list_file}:{first.line_no}: '{os.path.join(root_path, first.path)}' does not "
                 f"exist ({len(absent)} of {len(records)} videos of the list are missing")
        if missing == 'error' or len(absent) == len(records):
            raise DataError(f'{where}; check {root_flag} or remove them from the list)')
        logger.warning(f'{where}; they are replaced by other videos in training)')
    absent_ids = {id(r) for r in absent}
    present = [r for r in records if id(r) not in absent_ids]
    fill_frame_counts(present, root_path, list_file, image_tmpl, video_backend)
    if not probe_first:
        return records
    probe = TSNDataSet(root_path, None, 1, image_tmpl, None, random_shift=False,
                       video_list=present[:PROBE_VIDEOS], video_backend=video_backend)
    problems = []
    for i in range(len(probe)):
        try:
            probe[i]
            break
        except DataError as exc:
            problems.append(str(exc))
    else:
        raise DataError(f"{list_file}: none of the first {len(probe)} videos is readable "
                        f"({problems[0]}); check --dataset_path and the frame template "
                        f"'{image_tmpl}'")
    return records


def _spread(num_frames, num_segments):
    """0-based indices spreading `num_frames` frames evenly over `num_segments` slots."""
    return (np.arange(num_segments) * num_frames) // num_segments


def sample_train_indices(num_frames: int, num_segments: int, rng=np.random) -> np.ndarray:
    """TSN random-shift sampling: one random frame per equal segment (1-based)."""
    d = num_frames // num_segments
    if d > 0:
        offsets = np.arange(num_segments) * d + rng.randint(d, size=num_segments)
    elif num_frames > num_segments:
        offsets = np.sort(rng.choice(num_frames, num_segments, replace=False))
    else:
        offsets = _spread(num_frames, num_segments)
    return offsets + 1


def sample_dense_train_indices(num_frames: int, num_segments: int, rng=np.random,
                               center: bool = False) -> np.ndarray:
    """I3D-style dense sampling: T frames with stride 64 // T in a 64-frame window (1-based).

    The window starts at random (train) or in the middle (``center``); videos shorter than
    the window wrap around.
    """
    sample_pos = max(1, 1 + num_frames - DENSE_WINDOW)
    stride = DENSE_WINDOW // num_segments
    if sample_pos == 1:
        start = 0
    else:
        start = (sample_pos - 1) // 2 if center else rng.randint(0, sample_pos - 1)
    return np.array([(i * stride + start) % num_frames for i in range(num_segments)]) + 1


class ClipSampling(NamedTuple):
    """A registered test sampling: `clip_indices(num_frames, num_segments, clip, num_clips,
    rng) -> (T,)` 1-based indices of clip `clip` of `num_clips`; `clips` its fixed clip count
    (None: K, the --test_clips flag); `seeded` whether it draws from `rng` (seeded per video
    by --test_seed and the video's path)."""
    clip_indices: Callable[..., np.ndarray]
    clips: Optional[int]
    seeded: bool


TEST_SAMPLINGS: Dict[str, ClipSampling] = {}
RELEASE_SAMPLINGS = ('center', 'twice', 'dense')  # what the release's score names tell apart
FRAME_ORDERS = ('forward', 'reversed', 'shuffled')  # the release's is forward


def register_sampling(name: str, clips: Optional[int] = None, seeded: bool = False):
    """Register the decorated clip sampling under `name` (test.py / predict.py
    --test_sampling NAME, the score files' ``sampling`` setting)."""
    def register(clip_indices):
        TEST_SAMPLINGS[name] = ClipSampling(clip_indices, clips, seeded)
        return clip_indices
    return register


@register_sampling('center', clips=1)
def sample_val_indices(num_frames: int, num_segments: int, clip: int = 0, num_clips: int = 1,
                       rng=None) -> np.ndarray:
    """The central frame of each of T equal segments (1-based): the val clip."""
    tick = num_frames / num_segments
    return np.array([int(tick / 2.0 + tick * i) for i in range(num_segments)]) + 1


@register_sampling('twice', clips=2)
def sample_twice_clip(num_frames: int, num_segments: int, clip: int, num_clips: int = 2,
                      rng=None) -> np.ndarray:
    """Clip 0: the val indices; clip 1: the first frame of each segment (1-based)."""
    if clip == 0:
        return sample_val_indices(num_frames, num_segments)
    tick = num_frames / num_segments
    return np.array([int(tick * i) for i in range(num_segments)]) + 1


@register_sampling('dense')
def sample_dense_clip(num_frames: int, num_segments: int, clip: int, num_clips: int,
                      rng=None) -> np.ndarray:
    """Clip `clip` of K shifted clips, as the release: integer starts
    ``linspace(0, tick-1, K, dtype=int)``, indices ``int(tick*i + start)`` (1-based).

    Videos shorter than T frames (tick < 1, where the release's starts turn negative)
    use start 0 for every clip, i.e. the frames spread over the T slots.
    """
    tick = num_frames / num_segments
    start = int(np.linspace(0, tick - 1, num=num_clips, dtype=int)[clip]) if tick >= 1 else 0
    return np.array([int(tick * i + start) for i in range(num_segments)]) + 1


@register_sampling('random', seeded=True)
def sample_random_offset_clip(num_frames: int, num_segments: int, clip: int, num_clips: int,
                              rng) -> np.ndarray:
    """A clip of T frames at one random offset into the T equal segments:
    ``int(tick*i + u*tick)``, u uniform in [0, 1) drawn per clip (1-based)."""
    tick = num_frames / num_segments
    offset = rng.random() * tick
    return np.array([min(int(tick * i + offset), num_frames - 1)
                     for i in range(num_segments)]) + 1


def sample_twice_indices(num_frames: int, num_segments: int) -> np.ndarray:
    """The two clips of the 'twice' sampling, one after the other (1-based)."""
    return np.concatenate([sample_twice_clip(num_frames, num_segments, clip) for clip in (0, 1)])


def sample_dense_test_indices(num_frames: int, num_segments: int,
                              num_clips: int = 10) -> np.ndarray:
    """The `num_clips` clips of the 'dense' sampling, one after the other (1-based)."""
    return np.concatenate([sample_dense_clip(num_frames, num_segments, clip, num_clips)
                           for clip in range(num_clips)])


def video_rng(seed: int, key: str) -> np.random.Generator:
    """The random generator of one video under `seed`: the same for the same (seed, video)
    in every process, loader worker and order (a seeded test sampling is reproducible)."""
    digest = int.from_bytes(hashlib.sha1(key.encode('utf-8')).digest()[:8], 'little')
    return np.random.default_rng([seed, digest])


@dataclass(frozen=True)
class ViewProtocol:
    """The test-time views of a video: what test.py's scores, predict.py and the Recognizer
    depend on besides the model. Made from the flags in one place (from_flags / from_args);
    every field is a setting of the score file (settings()).

    test_crops: 1 center, 3 full-res, 5 corners + center, 10 = 5 + flips.
    full_res: crops of the scale size (256 px at 224) instead of the input size.
    sampling: a name of TEST_SAMPLINGS; num_clips: clips per video it draws.
    test_seed: the seed of a seeded sampling or of the shuffled order (None for the others).
    softmax: average softmax scores of the views' averaged logits (the release's --softmax).
    frame_order: a name of FRAME_ORDERS: the order of each clip's sampled frames.
    """
    test_crops: int = 1
    full_res: bool = False
    sampling: str = 'center'
    num_clips: int = 1
    test_seed: Optional[int] = None
    softmax: bool = False
    frame_order: str = 'forward'

    @property
    def seeded(self) -> bool:
        """Whether the views draw from the video's seeded generator (video_rng): a seeded
        sampling, or the shuffled order."""
        return TEST_SAMPLINGS[self.sampling].seeded or self.frame_order == 'shuffled'

    def __post_init__(self):
        if self.test_crops not in (1, 3, 5, 10):
            raise FlagError(f'--test_crops must be 1, 3, 5 or 10, got {self.test_crops}')
        if self.sampling not in TEST_SAMPLINGS:
            raise FlagError(f"--test_sampling {self.sampling!r}: not one of "
                            f"{', '.join(TEST_SAMPLINGS)}")
        if self.frame_order not in FRAME_ORDERS:
            raise FlagError(f"--frame_order {self.frame_order!r}: not one of "
                            f"{', '.join(FRAME_ORDERS)}")
        fixed = TEST_SAMPLINGS[self.sampling].clips
        if self.num_clips < 1 or fixed is not None and self.num_clips != fixed:
            raise FlagError(f'--test_sampling {self.sampling} draws {fixed or ">= 1"} clip(s), '
                            f'not {self.num_clips}')
        if (self.test_seed is not None) != self.seeded:
            raise FlagError(f'test_seed={self.test_seed} for the '
                            f"{'' if self.test_seed is None else 'un'}seeded sampling "
                            f'{self.sampling} in {self.frame_order} order')

    @classmethod
    def from_flags(cls, test_crops: int = 1, full_res: bool = False, twice_sample: bool = False,
                   dense_sample: bool = False, dense_sample_num: int = 10,
                   test_sampling: Optional[str] = None, test_seed: int = 0,
                   softmax: bool = False, frame_order: str = 'forward') -> 'ViewProtocol':
        """The protocol of test.py's / predict.py's view flags (opts.add_view_args; a flag
        there must be a parameter here, tests/test_dataset.py checks it): the release's
        --twice_sample / --dense_sample name the samplings 'twice' / 'dense' (exclusive, and
        with --test_sampling), --dense_sample_num (--test_clips) is K of a sampling without
        a fixed clip count, --test_seed seeds the seeded ones and the shuffled --frame_order."""
        named = [name for name, given in (('twice', twice_sample), ('dense', dense_sample),
                                          (test_sampling, test_sampling is not None)) if given]
        if twice_sample and dense_sample:
            raise FlagError('--dense_sample and --twice_sample exclude each other (pick one clip '
                            'sampling; --dense_clips is --dense_sample)')
        if len(named) > 1:
            raise FlagError(f'--test_sampling {test_sampling} and --{named[0]}_sample exclude '
                            f'each other (pick one clip sampling)')
        sampling = named[0] if named else 'center'
        entry = TEST_SAMPLINGS.get(sampling)
        clips = dense_sample_num if entry is None or entry.clips is None else entry.clips
        seeded = entry is not None and entry.seeded or frame_order == 'shuffled'
        return cls(test_crops, full_res, sampling, clips, test_seed if seeded else None, softmax,
                   frame_order)

    @classmethod
    def from_args(cls, args) -> 'ViewProtocol':
        """The protocol of parsed flags: every parameter of from_flags read from `args`."""
        names = inspect.signature(cls.from_flags).parameters
        return cls.from_flags(**{name: getattr(args, name) for name in names})

    def settings(self) -> Dict[str, object]:
        """The score file's view settings: every field set (None fields left out)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    def name_tag(self) -> str:
        """What a score file's name adds for views the release's names do not tell apart:
        '' for center / twice / dense in forward order, else '_<sampling>' (of the others),
        '_<frame order>' (not forward) and '_seed<S>' (seeded)."""
        parts = [self.sampling] if self.sampling not in RELEASE_SAMPLINGS else []
        if self.frame_order != 'forward':
            parts.append(self.frame_order)
        if self.test_seed is not None:
            parts.append(f'seed{self.test_seed}')
        return ''.join(f'_{part}' for part in parts)

    def sample_indices(self, num_frames: int, num_segments: int, key: str = '') -> np.ndarray:
        """1-based indices of the clips of a video of `num_frames` frames, clip after clip
        (num_clips x T), each clip's T in `frame_order`; `key` (the video's path) seeds a
        seeded sampling and the shuffled order (video_rng: the clips are drawn first, so they
        are those of the forward order)."""
        entry = TEST_SAMPLINGS[self.sampling]
        rng = video_rng(self.test_seed, key) if self.seeded else None
        clips = np.stack([entry.clip_indices(num_frames, num_segments, clip, self.num_clips, rng)
                          for clip in range(self.num_clips)])  # (num_clips, T)
        if self.frame_order == 'reversed':
            clips = clips[:, ::-1]
        elif self.frame_order == 'shuffled':
            clips = np.stack([clip[rng.permutation(num_segments)] for clip in clips])
        return clips.reshape(-1)


class TSNDataSet(Dataset):
    """Clips of T frames sampled TSN-style from the videos of a list file.

    Args:
        root_path: folder holding the frame folders / video files named in the list.
        list_file: the list file (see module docstring).
        num_segments: T.
        image_tmpl: frame file name template, e.g. '{:05d}.jpg'.
        transform: ``(frames, label) -> (tensor, label)`` (ops.transforms.build_transform).
        random_shift: training sampling (random); otherwise val sampling.
        test_mode: evaluation: the clips of `views`.
        dense_sample: dense sampling (I3D window for train/val; in test mode without `views`,
            the release's K shifted clips).
        twice_sample / dense_sample_num: the release's test samplings, in test mode without
            `views` (ViewProtocol.from_flags).
        views: the ViewProtocol whose sampling test mode uses.
        video_list: VideoRecords to use instead of reading `list_file` (which may be None); their
            unknown counts are counted on first read, in the reading process only (lists are
            counted up front: load_checked_list / fill_frame_counts).
        video_backend: decoder of video files (ops.video_readers.VIDEO_BACKENDS).
    Item: ``(Tensor (V*clips*T*3, H, W), label)``, the clips' frames concatenated.
    """

    def __init__(self, root_path, list_file, num_segments=8, image_tmpl='{:05d}.jpg',
                 transform=None, random_shift=True, test_mode=False, dense_sample=False,
                 twice_sample=False, dense_sample_num=10, video_list=None, video_backend='auto',
                 views: Optional[ViewProtocol] = None):
        self.root_path = root_path
        self.list_file = list_file
        self.num_segments = num_segments
        self.image_tmpl = image_tmpl
        self.transform = transform
        self.random_shift = random_shift
        self.test_mode = test_mode
        self.dense_sample = dense_sample
        if test_mode and views is None:
            views = ViewProtocol.from_flags(twice_sample=twice_sample, dense_sample=dense_sample,
                                            dense_sample_num=dense_sample_num)
        self.views = views
        self.num_replaced = 0
        try:
            self.video_backend = resolve_backend(video_backend)
        except VideoReadError as exc:
            raise DataError(str(exc)) from None
        if video_list is None:
            video_list = parse_list_file(list_file)
            fill_frame_counts(video_list, root_path, list_file, image_tmpl, self.video_backend)
        self.video_list = video_list

    @property
    def num_clips(self) -> int:
        return self.views.num_clips if self.test_mode else 1

    def sample_indices(self, num_frames: int, key: str = '') -> np.ndarray:
        """1-based frame indices of this dataset's mode for a video of `num_frames` frames;
        `key` (the video's path) seeds a seeded test sampling."""
        if self.test_mode:
            return self.views.sample_indices(num_frames, self.num_segments, key)
        if self.dense_sample:
            return sample_dense_train_indices(num_frames, self.num_segments,
                                              center=not self.random_shift)
        if self.random_shift:
            return sample_train_indices(num_frames, self.num_segments)
        return sample_val_indices(num_frames, self.num_segments)

    def _load_frames(self, record):
        """The sampled BGR frames of `record`, repairing unreadable ones (see module doc)."""
        path = os.path.join(self.root_path, record.path)
        what = (f"video '{path}' ({self.video_backend} backend)" if record.is_video_file
                else f"frame folder '{path}'")
        try:
            reader = open_reader(path, record.is_video_file, self.image_tmpl, self.video_backend)
        except VideoReadError as exc:
            raise DataError(str(exc)) from None
        with reader, reading(what):
            num_frames = record.num_frames or self._count(record, reader, path)
            indices = self.sample_indices(num_frames, record.path).tolist()
            frames = reader.read(indices)  # {index: frame or None}
            missing = sorted({i for i in indices if frames[i] is None})
            if missing:
                limit = self._frames_held(reader, what, num_frames)
                for index in missing:
                    frames[index] = self._nearest_readable(record, reader, frames, index, limit)
            return [frames[i] for i in indices]

    @staticmethod
    def _frames_held(reader, what, num_frames):
        """The frames to look for stand-ins in: the listed count, or (with one warning) the
        real count when the video holds fewer (a folder: its last frame file up to the listed
        count; a video file: the frames that decoded before its end)."""
        if isinstance(reader, FolderReader):
            real = next((i for i in range(num_frames, 0, -1)
                         if os.path.exists(reader.frame_path(i))), num_frames)
        else:
            real = num_frames if reader.end is None else reader.end
        if real >= num_frames:
            return num_frames
        if real == 0:  # nothing decodes: looking at frame 1 ends in the error naming the video
            return 1
        logger.warning("%s is listed with %d frames (or its container claims them) but holds "
                       "%d: frame %d stands in for the later ones", what, num_frames, real, real)
        return real

    def _count(self, record, reader, path):
        """Frame count of a record without one (a video given outside a list, or one the up-front
        count could not read), counted now and kept on the record."""
        count = reader.count()
        if count == 0:
            raise DataError(f"video '{path}' has no decodable frame")
        record.num_frames = count
        return count

    def _nearest_readable(self, record, reader, frames, index, num_frames):
        """The frame nearest to `index` (within 1..num_frames) that decodes."""
        is_folder = isinstance(reader, FolderReader)
        where = reader.frame_path(index) if is_folder else os.path.join(self.root_path, record.path)
        for distance in range(1, max(num_frames, index)):
            for candidate in (index - distance, index + distance):
                if 1 <= candidate <= num_frames:
                    if candidate not in frames:
                        frames.update(reader.read([candidate]))
                    if frames[candidate] is not None:
                        problem = ('missing' if is_folder and not os.path.exists(where)
                                   else 'unreadable')
                        logger.warning("%s frame %s (frame %d): using frame %d instead",
                                       problem, where, index, candidate)
                        return frames[candidate]
        mismatch = reader.template_mismatch() if is_folder else None
        if mismatch:
            raise TemplateError(mismatch)
        raise DataError(f"video '{os.path.join(self.root_path, record.path)}' has no readable "
                        f"frame (checked {num_frames} frames)")

    def __getitem__(self, index):
        for attempt in range(MAX_REPLACEMENTS + 1):
            record = self.video_list[index]
            try:
                frames = self._load_frames(record)
                break
            except DataError as exc:
                if self.test_mode or not self.random_shift or isinstance(exc, TemplateError):
                    raise
                if attempt == MAX_REPLACEMENTS:
                    raise DataError(f'{attempt + 1} training videos in a row have no readable '
                                    f'frame (the last: {exc}); check --dataset_path and the '
                                    f'frame template') from None
                self.num_replaced += 1
                logger.error('%s; training on another video instead', exc)
                index = random.randrange(len(self.video_list))
        if self.transform is None:
            return frames, record.label
        return self.transform(frames, record.label)

    def __len__(self):
        return len(self.video_list)


class LoaderStalled(DataError):
    """A data loader that yielded no batch for --loader_timeout seconds."""


class ReadingBoard:
    """What each loader worker is reading now, in memory shared with the main process, which
    reads it when the loader stalls: per worker its pid, a description of the video and the
    time.time() its read began (0: idle)."""

    SLOT = 1024  # bytes of each worker's description

    def __init__(self, workers: int):
        self.text = multiprocessing.RawArray('c', workers * self.SLOT)
        self.since = multiprocessing.RawArray('d', workers)
        self.pids = multiprocessing.RawArray('q', workers)

    def start(self, worker: int, what: str) -> None:
        self.since[worker] = 0.0
        data = what.encode('utf-8', 'replace')[:self.SLOT - 1] + b'\0'
        self.text[worker * self.SLOT:worker * self.SLOT + len(data)] = data
        self.since[worker] = time.time()

    def done(self, worker: int) -> None:
        self.since[worker] = 0.0

    def busy(self) -> List[Tuple[float, int, int, str]]:
        """[(seconds reading, worker, pid, what)] of the workers reading now, longest first."""
        now, found = time.time(), []
        for worker, since in enumerate(self.since[:]):
            if since:
                raw = self.text[worker * self.SLOT:(worker + 1) * self.SLOT].split(b'\0')[0]
                found.append((now - since, worker, self.pids[worker],
                              raw.decode('utf-8', 'replace')))
        return sorted(found, reverse=True)


_worker_board = None  # (ReadingBoard, worker id) in a loader worker, None elsewhere


@contextlib.contextmanager
def reading(what: str):
    """Note `what` on the loader's ReadingBoard while it is read (nothing outside workers)."""
    if _worker_board is None:
        yield
        return
    board, worker = _worker_board
    board.start(worker, what)
    try:
        yield
    finally:
        board.done(worker)


_waiting = 0  # the loaders of this process now waiting for a batch
# what torch's check of a worker's exit said while a stop was pending and no loader waited
_worker_exits = {'during_stop': None, 'installed': False}


def _watch_worker_exits():
    """Once per process, after torch set its SIGCHLD handler (which raises the error of a
    worker that died in whatever code runs then): while a stop is pending and no loader waits
    for a batch, keep that error for the loader's next batch instead, so the training loop
    first reaches the stop's checkpoint. Only in the main thread, where handlers are set."""
    if _worker_exits['installed'] or threading.current_thread() is not threading.main_thread():
        return
    torch_handler = signal.getsignal(signal.SIGCHLD)
    if not callable(torch_handler):
        return

    def on_child_exit(signum, frame):
        if not stop_pending() or _waiting:
            torch_handler(signum, frame)
            return
        try:
            torch_handler(signum, frame)
        except RuntimeError as exc:
            _worker_exits['during_stop'] = str(exc)

    signal.signal(signal.SIGCHLD, on_child_exit)
    _worker_exits['installed'] = True


def _init_worker(board, worker_id):
    """worker_init_fn of make_loader's workers: the stop signals are the main process's,
    the worker notes what it reads on `board` (OpenCV was made single-threaded before the fork)."""
    global _worker_board
    ignore_stop_signals()
    board.pids[worker_id] = os.getpid()
    _worker_board = (board, worker_id)


class WatchedLoader(DataLoader):
    """A DataLoader (built by make_loader) whose workers start as _init_worker says and whose
    iteration ends in one line instead of a silent stall or a worker's crash:

    - no batch for `timeout` seconds (workers only; 0: wait forever): LoaderStalled naming the
      worker reading longest, its video and backend, once the workers are shut down (those
      still reading are killed: they ignore the shutdown's SIGTERM);
    - a worker dying while a stop signal is pending (ops.preemption): part of the stop,
      Preempted (exit status 75) with one log line; the last checkpoint on disk is resumed.
    """

    def __init__(self, dataset, *, workers: int, timeout: float, **kwargs):
        self.board = ReadingBoard(workers) if workers else None
        if workers:
            single_threaded_decoders()  # before the fork: the workers inherit it (see there)
        super().__init__(dataset, num_workers=workers, timeout=timeout if workers else 0,
                         worker_init_fn=functools.partial(_init_worker, self.board)
                         if workers else None, **kwargs)

    def __iter__(self):
        with stop_signals_blocked():  # until the workers ignore them
            batches = super().__iter__()
        if self.num_workers:
            _watch_worker_exits()
        return self._watched(batches)

    def _watched(self, batches):
        global _waiting
        while True:
            if _worker_exits['during_stop']:
                message, _worker_exits['during_stop'] = _worker_exits['during_stop'], None
                raise self._part_of_stop(message)
            _waiting += 1
            try:
                batch = next(batches)
            except StopIteration:
                return
            except RuntimeError as exc:
                if not str(exc).startswith('DataLoader timed out'):
                    if stop_pending() and 'DataLoader worker' in str(exc):
                        raise self._part_of_stop(str(exc)) from None
                    raise
                break
            except (ConnectionError, EOFError) as exc:  # a worker that died mid-transfer
                if stop_pending():
                    raise self._part_of_stop(f'{type(exc).__name__}: {exc}') from None
                raise
            finally:
                _waiting -= 1
            yield batch
        # stalled: shut the workers down (dropping the iterator), then kill the ones still
        # reading, which ignore the SIGTERM of the shutdown
        busy = self.board.busy()
        del batches
        for _, _, pid, _ in busy:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        raise LoaderStalled(self._stall_line(busy))

    @staticmethod
    def _part_of_stop(message):
        """Preempted, after its log line, for a worker that died (torch's `message`) while a
        stop signal is pending."""
        logger.info(f'{stop_pending()}: a data loader worker ended during the stop '
                    f'({message.splitlines()[0]}); rerun the same command to resume from the '
                    f'last checkpoint')
        return Preempted()

    def _stall_line(self, busy):
        """The line of a loader that yielded nothing for its timeout, `busy` its workers still
        reading (ReadingBoard.busy)."""
        head = f'the data loader yielded no batch for {self.timeout:g} s (--loader_timeout)'
        if not busy:
            return f'{head}, and no worker is reading a video'
        seconds, worker, pid, what = busy[0]
        return (f'{head}: worker {worker} (pid {pid}) has been reading {what} for '
                f'{seconds:.0f} s; a decoder that hangs? try another --video_backend, or -j 0')


def make_loader(dataset, *, batch_size: int, workers: int, sampler=None, shuffle: bool = False,
                pin_memory: bool = False, drop_last: bool = False,
                timeout: float = LOADER_TIMEOUT) -> WatchedLoader:
    """The DataLoader of every command (see WatchedLoader): `workers` processes (0: load in
    this one), `timeout` seconds without a batch before the run stops (0: never)."""
    return WatchedLoader(dataset, batch_size=batch_size, shuffle=shuffle, sampler=sampler,
                         workers=workers, timeout=timeout, pin_memory=pin_memory,
                         drop_last=drop_last)
