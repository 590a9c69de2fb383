"""Frame readers: one small interface over frame folders and video decoders (the counts of
``-`` list entries are cached by ops.dataset.FrameCountCache).

A reader is opened on one video, answers ``count()`` (its number of frames) and
``read(indices)`` (1-based frame indices -> ``{index: BGR uint8 frame, or None when that frame
does not decode}``), and keeps nothing but the frames it returns. Frame ``i`` is the i-th frame
in presentation order for every backend, so a clip sampled from a video file equals the clip
sampled from the frame folder extracted from it (up to JPEG loss).

Backends (``--video_backend``):
    opencv  cv2.VideoCapture, decodes sequentially up to the last sampled frame.
    pyav    PyAV (``av``): seeks to the keyframe before a sampled frame when that is closer than
            decoding on from where it is (a second demuxer probes where the seek lands).
            Frames are converted to BGR by the reader's own single-threaded converter: PyAV's
            shared one (``frame.to_ndarray(format=...)``) keeps a libswscale slice-thread pool
            per thread, and a pool used before a fork hangs the forked loader worker forever.
    decord  decord.VideoReader.get_batch (seeks with its own keyframe index).
    auto    the first installed of AUTO_ORDER (the fastest on long videos, tools/bench_data.py).
PyAV and decord are optional (requirements-video.txt); asking for one that is not installed is an
error naming the package. Every reader decodes on one thread (the loader's workers are the
parallelism), so no decoder or converter thread state is shared across the loader's fork;
single_threaded_decoders() makes OpenCV's own pool single-threaded too (before workers fork).

A frame file counts as unreadable (None) when it is missing, empty, truncated, does not decode,
or is a JPEG whose decoder reports corrupt data (libjpeg's 'Corrupt JPEG data' / 'Premature end
of JPEG file' warnings, which OpenCV only prints); the dataset then uses the nearest good frame.
"""
import abc
import logging
import os
import sys
from fractions import Fraction
from typing import Dict, Iterable, Optional

import cv2
import numpy as np

from ops.errors import UserError

logger = logging.getLogger('masnet.data')

VIDEO_EXTENSIONS = ('.mp4', '.avi', '.mkv', '.webm', '.mov', '.m4v')
VIDEO_BACKENDS = ('auto', 'opencv', 'pyav', 'decord')
# 'auto' picks the first of these that is installed (docs/speed.md#video-decoding)
AUTO_ORDER = ('pyav', 'decord', 'opencv')
_PACKAGES = {'pyav': 'av', 'decord': 'decord'}
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp')
# frame name templates of the known layouts, to name the one a folder actually uses
KNOWN_TEMPLATES = ('{:05d}.jpg', '{:06d}.jpg', 'img_{:05d}.jpg', 'image_{:05d}.jpg', '{:04d}.jpg')


class VideoReadError(UserError):
    """A video or frame folder that cannot be opened, or a backend that is not installed."""


def backend_available(name: str) -> bool:
    """Whether the package of backend `name` imports."""
    if name == 'opencv':
        return True
    try:
        __import__(_PACKAGES[name])
    except ImportError:
        return False
    return True


def resolve_backend(name: str) -> str:
    """The concrete backend of `name` ('auto': the first installed of AUTO_ORDER)."""
    if name == 'auto':
        return next(b for b in AUTO_ORDER if backend_available(b))
    if name not in VIDEO_BACKENDS:
        raise VideoReadError(f"--video_backend {name}: unknown "
                             f"(choose from {', '.join(VIDEO_BACKENDS)})")
    if not backend_available(name):
        raise VideoReadError(f"--video_backend {name} needs the '{_PACKAGES[name]}' package: "
                             f"pip install -r requirements-video.txt")
    return name


def single_threaded_decoders() -> None:
    """Make OpenCV decode and resize on the calling thread only: called in the main process
    before loader workers fork (the workers are the parallelism). Never in a forked worker:
    there, once the parent had used OpenCV's thread pool, setNumThreads waits forever for the
    parent's pool threads, which the fork did not copy (tests/test_loaders.py)."""
    cv2.setNumThreads(1)


# libjpeg warnings that mean the decoded picture is (partly) garbage
JPEG_CORRUPTION_WARNINGS = (b'Corrupt JPEG data', b'Premature end of JPEG file')


def _imdecode_with_warnings(data: np.ndarray):
    """cv2.imdecode of `data` and the lines libjpeg wrote meanwhile: its warnings go straight to
    file descriptor 2, which points at a pipe for the call (non-blocking, so nothing can hang;
    libjpeg prints one warning per picture)."""
    sys.stderr.flush()
    saved = os.dup(2)
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    try:
        os.dup2(write_end, 2)
        image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(write_end)
    with os.fdopen(read_end, 'rb') as pipe:
        return image, pipe.read().splitlines(keepends=True)


def decode_image_file(path: str) -> Optional[np.ndarray]:
    """BGR uint8 frame of an image file, or None if missing / truncated / undecodable / a JPEG
    reported corrupt by its decoder."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError:
        return None
    if data.size == 0:
        return None
    if data[:2].tobytes() == b'\xff\xd8':  # a JPEG (whatever its name says)
        tail = data[-32:].tobytes()
        if b'\xff\xd9' not in tail:  # no end-of-image marker: truncated file
            return None
        image, lines = _imdecode_with_warnings(data)
        corrupt = [line for line in lines if line.startswith(JPEG_CORRUPTION_WARNINGS)]
        other = b''.join(line for line in lines if line not in corrupt)
        if other:  # anything else written meanwhile goes where it was meant to
            os.write(2, other)
        return None if corrupt else image
    return cv2.imdecode(data, cv2.IMREAD_COLOR)


def count_frames(folder: str) -> int:
    """Number of image files in a frame folder."""
    return sum(1 for name in os.listdir(folder) if name.lower().endswith(IMAGE_EXTENSIONS))


class FrameReader(abc.ABC):
    """The reader interface: ``count()``, ``read(indices)``, ``close()``; a context manager.

    ``end`` is the number of frames found to decode when a read ran past the end of the
    video (None while unknown).
    """
    end: Optional[int] = None

    @abc.abstractmethod
    def count(self) -> int:
        """Number of frames of the video."""

    @abc.abstractmethod
    def read(self, indices: Iterable[int]) -> Dict[int, Optional[np.ndarray]]:
        """``{index: BGR frame or None}`` for the 1-based `indices`."""

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class FolderReader(FrameReader):
    """Frames ``<folder>/<tmpl.format(i)>``."""

    def __init__(self, folder: str, tmpl: str):
        if not os.path.isdir(folder):
            raise VideoReadError(f"frame folder '{folder}' does not exist")
        self.folder, self.tmpl = folder, tmpl

    def frame_path(self, index: int) -> str:
        return os.path.join(self.folder, self.tmpl.format(index))

    def count(self) -> int:
        return count_frames(self.folder)

    def read(self, indices):
        return {i: decode_image_file(self.frame_path(i)) for i in set(indices)}

    def template_mismatch(self) -> Optional[str]:
        """A message naming both templates when the folder's frames use another known one."""
        if os.path.exists(self.frame_path(1)):
            return None
        for tmpl in KNOWN_TEMPLATES:
            if tmpl != self.tmpl and os.path.exists(os.path.join(self.folder, tmpl.format(1))):
                return (f"frame folder '{self.folder}' names its frames '{tmpl}' but the dataset's "
                        f"template is '{self.tmpl}': extract with tools/extract_frames.py --tmpl "
                        f"'{self.tmpl}' (or --dataset), or give the dataset image_tmpl '{tmpl}'")
        return None


class OpenCVReader(FrameReader):
    """cv2.VideoCapture: grabs frames in order, converts only the sampled ones (reopened to
    go back)."""

    def __init__(self, path: str):
        self.path = path
        self.capture = self._open()
        self.position = 0  # frames grabbed from self.capture

    def _open(self):
        capture = cv2.VideoCapture(self.path)
        if not capture.isOpened():
            raise VideoReadError(f"video '{self.path}' cannot be opened")
        return capture

    def count(self) -> int:
        capture = self._open()
        count = 0
        try:
            while capture.grab():  # decodes without converting to BGR, keeps nothing
                count += 1
        finally:
            capture.release()
        return count

    def read(self, indices):
        wanted = set(indices)
        frames = {i: None for i in wanted}
        if not wanted:
            return frames
        if min(wanted) <= self.position:
            self.capture.release()
            self.capture, self.position = self._open(), 0
        last = max(wanted)
        while self.position < last:
            if not self.capture.grab():
                self.end = self.position
                break
            self.position += 1
            if self.position in wanted:
                ok, img = self.capture.retrieve()
                frames[self.position] = img if ok else None
        return frames

    def close(self):
        self.capture.release()


class PyAVReader(FrameReader):
    """PyAV with keyframe seeks.

    Frame i (0-based) has pts ``start + i / (fps * time_base)`` (constant frame rate). Before
    decoding towards a sampled frame, a second demuxer seeks to it and reads one packet: the
    keyframe the decoder would restart from. The decoder seeks only when that keyframe lies
    beyond the frames it has already decoded, so no frame is decoded twice and no frame between
    the current position and that keyframe is decoded at all.
    """

    def __init__(self, path: str):
        import av
        from av.video.reformatter import VideoReformatter
        self.av = av
        self.path = path
        try:
            self.container = av.open(path)
            self.probe = av.open(path)
        except (av.FFmpegError, OSError) as exc:
            raise VideoReadError(f"video '{path}' cannot be opened: {exc}") from None
        if not self.container.streams.video:
            self.close()
            raise VideoReadError(f"video '{path}' has no video stream")
        self.stream = self.container.streams.video[0]
        self.stream.thread_count = 1  # parallelism comes from the loader's workers
        self.probe_stream = self.probe.streams.video[0]
        rate = self.stream.average_rate or self.stream.guessed_rate or Fraction(25)
        self.frame_pts = 1 / (Fraction(rate) * self.stream.time_base)  # pts per frame
        self.start = self.stream.start_time or 0
        self.decoder = None
        self.position = -1  # 0-based index of the last frame decoded by self.decoder
        self.converter = VideoReformatter()

    def _bgr(self, frame) -> np.ndarray:
        """The (H, W, 3) BGR array of a decoded frame, converted on this thread only."""
        return self.converter.reformat(frame, format='bgr24', threads=1).to_ndarray()

    def _index(self, pts) -> int:
        return int(round((pts - self.start) / self.frame_pts))

    def _pts(self, index) -> int:
        return int(self.start + round(index * self.frame_pts))

    def count(self) -> int:
        if self.stream.frames > 0:  # the container's frame count
            return self.stream.frames
        probe = self.av.open(self.path)
        try:
            return sum(1 for p in probe.demux(probe.streams.video[0]) if p.size > 0)
        finally:
            probe.close()

    def _keyframe_before(self, index) -> Optional[int]:
        """Index of the keyframe a seek to frame `index` lands on (None if unknown)."""
        try:
            self.probe.seek(self._pts(index), stream=self.probe_stream, backward=True)
            for packet in self.probe.demux(self.probe_stream):
                pts = packet.pts if packet.pts is not None else packet.dts
                return None if pts is None else self._index(pts)
        except self.av.FFmpegError:
            return None
        return None

    def _seek(self, index):
        self.container.seek(self._pts(index), stream=self.stream, backward=True)
        self.decoder = self.container.decode(self.stream)
        self.position = -1

    def _decode_to(self, target, wanted, frames):
        """Decode on to frame `target` (0-based), keeping the wanted ones; False at the end."""
        try:
            for frame in self.decoder:
                if frame.pts is None:
                    continue
                index = self._index(frame.pts)
                self.position = index
                if index + 1 in wanted and frames.get(index + 1) is None:
                    frames[index + 1] = self._bgr(frame)
                if index >= target:
                    return True
        except self.av.FFmpegError as exc:
            logger.warning("video '%s': decoding stopped at frame %d: %s", self.path,
                           self.position + 1, exc)
        return False

    def read(self, indices):
        wanted = set(indices)
        frames = {i: None for i in wanted}
        for one_based in sorted(wanted):
            target = one_based - 1
            if frames[one_based] is not None:
                continue
            if self.decoder is None or target <= self.position:
                self._seek(target)
            elif target - self.position > 1:
                keyframe = self._keyframe_before(target)
                if keyframe is not None and keyframe > self.position + 1:
                    self._seek(target)
            if not self._decode_to(target, wanted, frames):
                self.end = self.position + 1
                self.decoder = None
                break
            if frames[one_based] is None and self.position > target:
                # the seek landed after the frame (an imprecise index): decode from the start
                self._seek(0)
                if not self._decode_to(target, wanted, frames):
                    break
        return frames

    def close(self):
        for container in (getattr(self, 'container', None), getattr(self, 'probe', None)):
            if container is not None:
                container.close()


class DecordReader(FrameReader):
    """decord.VideoReader; frames of a batch that fails are read one by one."""

    def __init__(self, path: str):
        import decord
        self.decord = decord
        self.path = path
        try:
            self.reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
        except (decord.DECORDError, RuntimeError) as exc:
            raise VideoReadError(f"video '{path}' cannot be opened: "
                                 f"{str(exc).splitlines()[0]}") from None

    def count(self) -> int:
        return len(self.reader)

    def read(self, indices):
        wanted = sorted(set(indices))
        frames = {i: None for i in wanted}
        inside = [i for i in wanted if 1 <= i <= len(self.reader)]
        if len(inside) < len(wanted):
            self.end = len(self.reader)
        try:
            batch = self.reader.get_batch([i - 1 for i in inside]).asnumpy()  # (n, H, W, 3) RGB
            for i, rgb in zip(inside, batch):
                frames[i] = np.ascontiguousarray(rgb[..., ::-1])
        except (self.decord.DECORDError, RuntimeError):
            for i in inside:
                try:
                    frames[i] = np.ascontiguousarray(self.reader[i - 1].asnumpy()[..., ::-1])
                except (self.decord.DECORDError, RuntimeError):
                    frames[i] = None
        return frames


_VIDEO_READERS = {'opencv': OpenCVReader, 'pyav': PyAVReader, 'decord': DecordReader}


def open_reader(path: str, is_video_file: bool, image_tmpl: str = '{:05d}.jpg',
                backend: str = 'auto') -> FrameReader:
    """A FrameReader on a video file (with `backend`) or on a frame folder."""
    if not is_video_file:
        return FolderReader(path, image_tmpl)
    if not os.path.isfile(path):
        raise VideoReadError(f"video file '{path}' does not exist")
    return _VIDEO_READERS[resolve_backend(backend)](path)

