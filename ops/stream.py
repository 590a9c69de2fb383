"""Sliding-window prediction over long videos and live streams (any OpenCV source).

A window holds the last ``window`` frames of the source; every ``stride`` frames the
window's frames are sampled as a test clip (T frames, test.py's sampling and crops) and
classified. A source shorter than one window gives one prediction over all its frames.
Frames are scaled to the model's scale size on arrival (the test transform's first step),
so the window costs little memory even for HD streams.

Sources: a video file, a camera index ('0') or a stream URL ('rtsp://...', 'http://...').
"""
import collections
import contextlib
import logging
import os
from typing import Iterator, Optional, Union

import cv2

from ops.dataset import DataError
from ops.files import atomic_path
from ops.predictions import Prediction
from ops.recognizer import Recognizer
from ops.transforms import GroupScale

logger = logging.getLogger('masnet')


def open_source(source: Union[str, int]) -> cv2.VideoCapture:
    """An opened cv2.VideoCapture of a video file, camera index or URL."""
    if isinstance(source, str) and source.isdigit():
        source = int(source)
    elif isinstance(source, str) and '://' not in source and not os.path.isfile(source):
        raise DataError(f"stream source '{source}' is neither a video file, "
                        "a camera index nor a URL")
    capture = cv2.VideoCapture(source)
    if not capture.isOpened():
        raise DataError(f"stream source '{source}' cannot be opened by OpenCV")
    return capture


def open_writer(file: str, fps: float, size, path: str) -> cv2.VideoWriter:
    """An opened cv2.VideoWriter of ``size`` (width, height) writing `file`, the temporary
    file of the video `path` (ops.files.atomic_path): mp4v for .mp4, else MJPG."""
    fourcc = cv2.VideoWriter_fourcc(*('mp4v' if path.lower().endswith('.mp4') else 'MJPG'))
    writer = cv2.VideoWriter(file, fourcc, fps, size)
    if not writer.isOpened():
        raise DataError(f"'{path}': OpenCV cannot write this video file")
    return writer


def write_video(path: str, frames, fps: float = 12.0) -> None:
    """Write BGR uint8 frames (all of one size) to a video file, atomically."""
    with atomic_path(path) as file:
        writer = open_writer(file, fps, (frames[0].shape[1], frames[0].shape[0]), path)
        try:
            for frame in frames:
                writer.write(frame)
        finally:
            writer.release()


class Annotator:
    """Writes the source's frames to a video file with the latest prediction drawn on them;
    the file appears at `path` only when closed without a failure (ops.files.atomic_path)."""

    def __init__(self, path: str, fps: float, size):
        self._file = contextlib.ExitStack()
        file = self._file.enter_context(atomic_path(path))
        try:
            self.writer = open_writer(file, fps, size, path)
        except BaseException as exc:  # no temporary file left behind
            self._file.__exit__(type(exc), exc, exc.__traceback__)
            raise
        self.text = ''

    def write(self, frame):
        frame = frame.copy()
        scale = max(frame.shape[0] / 480.0, 0.4)
        for colour, thickness in (((0, 0, 0), 3), ((255, 255, 255), 1)):
            cv2.putText(frame, self.text, (8, int(24 * scale)), cv2.FONT_HERSHEY_SIMPLEX,
                        0.6 * scale, colour, max(1, int(thickness * scale)), cv2.LINE_AA)
        self.writer.write(frame)

    def close(self, failure: Optional[BaseException] = None):
        """Finish the video: in place at its path, or discarded after a `failure`."""
        self.writer.release()
        if failure is None:
            self._file.close()
        else:
            self._file.__exit__(type(failure), failure, failure.__traceback__)


def sliding_window(recognizer: Recognizer, source: Union[str, int], window: int, stride: int,
                   topk: int = 5, annotate: Optional[str] = None,
                   max_frames: Optional[int] = None) -> Iterator[Prediction]:
    """Predictions of the windows of `source`, as they complete.

    Each Prediction's ``extra`` holds the window's first/last frame (1-based) and, when the
    source reports a frame rate, their times in seconds. ``annotate``: path of an output video
    with the latest window's top-1 class written on each frame (as it would be shown live).
    """
    if window < 1 or stride < 1:
        raise DataError(f'--window and --stride must be >= 1, got {window} and {stride}')
    capture = open_source(source)
    fps = capture.get(cv2.CAP_PROP_FPS) or 0.0
    scale = GroupScale(recognizer.model.scale_size)
    frames = collections.deque(maxlen=window)
    annotator = None
    name = str(source)
    index = 0  # frames read so far
    last_end = 0  # last frame of the last predicted window

    def predict():
        start = index - len(frames) + 1
        extra = {'start_frame': start, 'end_frame': index}
        if fps > 0:
            extra.update(start_s=round((start - 1) / fps, 3), end_s=round(index / fps, 3))
        prediction = recognizer.predict_frames(list(frames), topk, name, **extra)
        if annotator is not None:
            annotator.text = f'{prediction.names[0]} ({prediction.probabilities[0]:.0%})'
        return prediction

    failure = None
    try:
        while max_frames is None or index < max_frames:
            ok, frame = capture.read()
            if not ok:
                break
            index += 1
            if annotate and annotator is None:
                annotator = Annotator(annotate, fps if fps > 0 else 25.0,
                                      (frame.shape[1], frame.shape[0]))
            frames.append(scale([frame])[0])
            if index >= window and (index - window) % stride == 0:
                last_end = index
                yield predict()
            if annotator is not None:
                annotator.write(frame)
        if index == 0:
            raise DataError(f"stream source '{source}' gave no frame")
        if last_end == 0:  # shorter than one window: one prediction over all of it
            yield predict()
    except BaseException as exc:
        if not isinstance(exc, GeneratorExit):  # a consumer that stops early keeps the video
            failure = exc
        raise
    finally:
        capture.release()
        if annotator is not None:
            annotator.close(failure)
