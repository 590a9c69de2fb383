"""TSN-style video dataset: list files, segment sampling, frame / video decoding.

A list file has one video per line, ``<folder> <num_frames> <label>`` (frame folders,
frames numbered from 1), or ``<file.mp4> <num_frames|-> <label>`` for video files, decoded on
the fly by a reader of ops.video_readers (``--video_backend``), or MMAction2's
``<path> <label>``. A ``-`` or absent count is found on first read and kept in the list's frame
count index (``<list>.frames``), so later reads and epochs do not count again.

Sampling (T = num_segments, n = frames of the video, indices 1-based):
    train  d = n // T; d > 0: i*d + randint(d); n > T: sorted random distinct picks;
           else the n frames spread evenly over T.
    val    tick = n / T, int(tick/2 + tick*i).
    twice  the val indices followed by int(tick*i).
    dense  test: K clips, integer starts linspace(0, tick-1, K, dtype=int), int(tick*i + start);
           train/val: an I3D-style 64-frame window with stride 64 // T (random / central start).

Bad input policy: a missing or corrupt frame is logged and replaced by the nearest readable
frame of the same video (a listed count larger than the video is named in the warning). A
video with no readable frame is logged and, in training, replaced by another random video
(counted in ``num_replaced``; after MAX_REPLACEMENTS in a row the run stops with one line); in
evaluation it is an error naming the video, since scores of a substitute would be silently
wrong. ``load_checked_list`` checks a list before any epoch: labels in range, every video
present (an error naming ``file:line``; for a training list only a warning unless none is
present), and a readable first video among the first few.
"""
import logging
import os
import random
from typing import List

import numpy as np
from torch.utils.data import Dataset

from ops.errors import UserError
from ops.video_readers import (VIDEO_EXTENSIONS, FolderReader, FrameCountIndex, VideoReadError,
                               open_reader, resolve_backend)

logger = logging.getLogger('masnet.data')

DENSE_WINDOW = 64
MAX_REPLACEMENTS = 20  # unreadable training videos in a row before the run stops
PROBE_VIDEOS = 5  # videos of each list decoded before training


class DataError(UserError):
    """A list file or video that cannot be used."""


class TemplateError(DataError):
    """Frame folders named with another template than the dataset's (never replaced in
    training: every video would fail)."""


class VideoRecord:
    """One line of a list file."""

    def __init__(self, path, num_frames, label, line_no=None):
        self.path = path
        self.num_frames = num_frames  # None: counted on first read ('-' or a 2-field line)
        self.label = label
        self.line_no = line_no  # line in the list file

    @property
    def is_video_file(self) -> bool:
        return self.path.lower().endswith(VIDEO_EXTENSIONS)


def parse_list_file(list_file: str) -> List['VideoRecord']:
    """VideoRecords of `list_file`; a malformed line raises DataError naming file and line."""
    if not os.path.isfile(list_file):
        raise DataError(f"list file '{list_file}' does not exist")
    records = []
    with open(list_file, 'rb') as f:
        for line_no, raw in enumerate(f, start=1):
            try:
                line = raw.decode('utf-8')
            except UnicodeDecodeError:
                raise DataError(f"{list_file}:{line_no}: not UTF-8 text (is it a list file?)") from None
            if not line.strip():
                continue
            parts = line.split()
            try:
                if len(parts) == 2:  # MMAction2's '<path> <label>': count on first read
                    parts.insert(1, '-')
                if len(parts) != 3:
                    raise ValueError(f'expected 2 or 3 fields, got {len(parts)}')
                path, num_frames, label = parts
                frames = None if num_frames == '-' else int(num_frames)
                if frames is not None and frames < 1:
                    raise ValueError('num_frames must be >= 1')
                records.append(VideoRecord(path, frames, int(label), line_no))
            except ValueError as exc:
                want = "'<path> <num_frames|-> <label>' or '<path> <label>'"
                raise DataError(f"{list_file}:{line_no}: cannot parse '{line.strip()[:80]}' "
                                f"(want {want}: {exc})") from None
    if not records:
        raise DataError(f"list file '{list_file}' holds no video")
    return records


def check_labels(records: List['VideoRecord'], list_file: str, num_class: int,
                 allow_unlabelled: bool = False) -> None:
    """Refuse a label outside [0, num_class) (-1, unknown, too when `allow_unlabelled`),
    naming the list file and line."""
    for record in records:
        if allow_unlabelled and record.label == -1:
            continue
        if not 0 <= record.label < num_class:
            hint = ' (an unlabelled list: predict.py takes it)' if record.label == -1 else ''
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


def load_checked_list(list_file: str, root_path: str, num_class: int, image_tmpl: str,
                      missing: str = 'error', video_backend: str = 'auto',
                      allow_unlabelled: bool = False) -> List['VideoRecord']:
    """The VideoRecords of `list_file`, checked before any epoch (see the module docstring).

    missing: 'error' (validation / test lists: a missing video would cost a whole epoch or
        bias the scores) or 'warn' (training lists: missing videos are replaced by others,
        as unreadable ones are; an error only if no video is present).
    allow_unlabelled: accept label -1 (unknown: lists to predict, e.g. a test split).
    Raises DataError naming the file and line of the first problem.
    """
    records = parse_list_file(list_file)
    check_labels(records, list_file, num_class, allow_unlabelled)
    absent = missing_videos(records, root_path)
    if absent:
        first = absent[0]
        where = (f"{list_file}:{first.line_no}: '{os.path.join(root_path, first.path)}' does not "
                 f"exist ({len(absent)} of {len(records)} videos of the list are missing")
        if missing == 'error' or len(absent) == len(records):
            raise DataError(f'{where}; check --dataset_path or remove them from the list)')
        logger.warning(f'{where}; they are replaced by other videos in training)')
    absent_ids = {id(r) for r in absent}
    present = [r for r in records if id(r) not in absent_ids]
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


def sample_val_indices(num_frames: int, num_segments: int) -> np.ndarray:
    """The central frame of each of T equal segments (1-based)."""
    tick = num_frames / num_segments
    return np.array([int(tick / 2.0 + tick * i) for i in range(num_segments)]) + 1


def sample_twice_indices(num_frames: int, num_segments: int) -> np.ndarray:
    """Two clips: the val indices, then the first frame of each segment (1-based)."""
    tick = num_frames / num_segments
    starts = [int(tick * i) for i in range(num_segments)]
    return np.concatenate([sample_val_indices(num_frames, num_segments), np.array(starts) + 1])


def sample_dense_test_indices(num_frames: int, num_segments: int, num_clips: int = 10) -> np.ndarray:
    """`num_clips` shifted clips, as the release: integer starts
    ``linspace(0, tick-1, K, dtype=int)``, indices ``int(tick*i + start)`` (1-based).

    Videos shorter than T frames (tick < 1, where the release's starts turn negative)
    use start 0 for every clip, i.e. the frames spread over the T slots.
    """
    tick = num_frames / num_segments
    starts = np.linspace(0, tick - 1, num=num_clips, dtype=int) if tick >= 1 else \
        np.zeros(num_clips, dtype=int)
    offsets = [int(tick * i + start) for start in starts.tolist() for i in range(num_segments)]
    return np.array(offsets) + 1


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


class TSNDataSet(Dataset):
    """Clips of T frames sampled TSN-style from the videos of a list file.

    Args:
        root_path: folder holding the frame folders / video files named in the list.
        list_file: the list file (see module docstring).
        num_segments: T.
        image_tmpl: frame file name template, e.g. '{:05d}.jpg'.
        transform: ``(frames, label) -> (tensor, label)`` (ops.transforms.build_transform).
        random_shift: training sampling (random); otherwise val sampling.
        test_mode: evaluation with possibly several clips (twice / dense).
        dense_sample: dense sampling (I3D window for train/val, K shifted clips in test).
        twice_sample: two clips per video in test mode.
        dense_sample_num: K, clips per video with dense test sampling.
        video_list: VideoRecords to use instead of reading `list_file` (which may be None).
        video_backend: decoder of video files (ops.video_readers.VIDEO_BACKENDS).
    Item: ``(Tensor (V*clips*T*3, H, W), label)``, the clips' frames concatenated.
    """

    def __init__(self, root_path, list_file, num_segments=8, image_tmpl='{:05d}.jpg',
                 transform=None, random_shift=True, test_mode=False, dense_sample=False,
                 twice_sample=False, dense_sample_num=10, video_list=None, video_backend='auto'):
        self.root_path = root_path
        self.list_file = list_file
        self.num_segments = num_segments
        self.image_tmpl = image_tmpl
        self.transform = transform
        self.random_shift = random_shift
        self.test_mode = test_mode
        self.dense_sample = dense_sample
        self.twice_sample = twice_sample
        self.dense_sample_num = dense_sample_num
        self.video_list = video_list if video_list is not None else parse_list_file(list_file)
        self.num_replaced = 0
        try:
            self.video_backend = resolve_backend(video_backend)
        except VideoReadError as exc:
            raise DataError(str(exc)) from None
        self.frame_counts = FrameCountIndex(list_file if video_list is None else None)

    @property
    def num_clips(self) -> int:
        if self.test_mode and self.twice_sample:
            return 2
        if self.test_mode and self.dense_sample:
            return self.dense_sample_num
        return 1

    def sample_indices(self, num_frames: int) -> np.ndarray:
        """1-based frame indices of this dataset's mode for a video of `num_frames` frames."""
        T = self.num_segments
        if self.test_mode and self.twice_sample:
            return sample_twice_indices(num_frames, T)
        if self.test_mode and self.dense_sample:
            return sample_dense_test_indices(num_frames, T, self.dense_sample_num)
        if self.dense_sample:
            return sample_dense_train_indices(num_frames, T, center=not self.random_shift)
        if self.random_shift:
            return sample_train_indices(num_frames, T)
        return sample_val_indices(num_frames, T)

    def _load_frames(self, record):
        """The sampled BGR frames of `record`, repairing unreadable ones (see module doc)."""
        path = os.path.join(self.root_path, record.path)
        try:
            reader = open_reader(path, record.is_video_file, self.image_tmpl, self.video_backend)
        except VideoReadError as exc:
            raise DataError(str(exc)) from None
        with reader:
            num_frames = record.num_frames or self._count(record, reader, path)
            indices = self.sample_indices(num_frames).tolist()
            frames = reader.read(indices)  # {index: frame or None}
            missing = sorted({i for i in indices if frames[i] is None})
            if missing:
                limit = num_frames
                if reader.end is not None and reader.end < num_frames:
                    logger.warning("video '%s' is listed with %d frames (or its container "
                                   "claims them) but only %d decode: frame %d stands in for "
                                   "the later ones", path, num_frames, reader.end, reader.end)
                    limit = max(reader.end, 1)
                for index in missing:
                    frames[index] = self._nearest_readable(record, reader, frames, index, limit)
            return [frames[i] for i in indices]

    def _count(self, record, reader, path):
        """Frame count of a '-' entry: from the frame count index, else counted once and kept."""
        count = self.frame_counts.get(record.path)
        if count is None:
            count = reader.count()
            if count == 0:
                raise DataError(f"video '{path}' has no decodable frame")
            self.frame_counts.add(record.path, count)
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
                        problem = ('missing (the list says %d frames)' % num_frames
                                   if is_folder and not os.path.exists(where) else 'unreadable')
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
