"""The prediction run behind predict.py: a Recognizer (ops.recognizer) over the inputs, or
over sliding windows of a video or stream, and the output files.

Sliding windows over long videos and live streams (any OpenCV source): a window holds the
last ``window`` frames of the source; every ``stride`` frames the window's frames are sampled
as a test clip (T frames, test.py's sampling and crops) and classified. A source shorter than
one window gives one prediction over all its frames. Frames are scaled to the model's scale
size on arrival (the test transform's first step), so the window costs little memory even for
HD streams. Sources: a video file, a camera index ('0') or a stream URL ('rtsp://...',
'http://...').
"""
import collections
import contextlib
import logging
import os
from typing import Iterator, List, Optional, Union

import cv2
import torch

from ops.dataset import DataError, ViewProtocol
from ops.dataset_config import get_dataset_config, read_categories
from ops.files import atomic_path, prepare_output
from ops.MASNet import set_form
from ops.recognizer import (
    Prediction,
    Recognizer,
    collect_inputs,
    write_csv,
    write_json,
    write_submission,
)
from ops.runtime import compile_model, to_channels_last
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


def run_prediction(args) -> List[Prediction]:
    """predict.py: load the recognizer, predict the input (or its windows), write the outputs."""
    for flag in ('json', 'csv', 'submission', 'annotate'):
        if getattr(args, flag):
            prepare_output(getattr(args, flag), '--' + flag)
    device = args.device or ('cuda' if torch.cuda.is_available() else 'cpu')
    # class names: the checkpoint's; --categories / --dataset are checked against them, and
    # needed for checkpoints that record none
    categories, given_by, image_tmpl = None, None, args.image_tmpl
    if args.categories:
        categories, given_by = read_categories(args.categories), f"--categories '{args.categories}'"
    elif args.dataset:
        cfg = get_dataset_config(args.dataset, args.dataset_path)
        categories, given_by, image_tmpl = cfg.categories, f'--dataset {args.dataset}', \
            args.image_tmpl or cfg.image_tmpl
    views = ViewProtocol.from_args(args)
    recognizer = Recognizer.from_checkpoint(
        args.weights, categories, args.test_segments, args.type, args.arch, args.input_size,
        device, given_by=given_by, required='--categories FILE or --dataset NAME',
        trust_checkpoint=args.trust_checkpoint, views=views,
        image_tmpl=image_tmpl or '{:05d}.jpg')
    model = recognizer.model
    recognizer.model = compile_model(
        to_channels_last(set_form(args.mas_form, model), args.channels_last), args.compile)
    logger.info(f'{args.weights}: {model.temporal_type} {model.arch}, {model.num_segments} '
                f'segments, {views.test_crops} crop(s) x {views.num_clips} clip(s) of '
                f'{model.crop_size}px on {recognizer.device}')
    if args.window is not None:
        stride = args.stride or max(args.window // 2, 1)
        predictions = []
        for prediction in sliding_window(recognizer, args.input, args.window, stride, args.topk,
                                         args.annotate, args.max_frames):
            logger.info(prediction.as_text())
            predictions.append(prediction)
        if args.annotate:
            logger.info(f'annotated video written to {args.annotate}')
    else:
        root, records = collect_inputs(args.input, args.root, recognizer.categories)
        predictions = recognizer.predict_records(root, records, args.topk, args.batch_size,
                                                 args.workers)
        for prediction in predictions:
            logger.info(prediction.as_text())
    for path, write in ((args.json, write_json), (args.csv, write_csv),
                        (args.submission, write_submission)):
        if path:
            write(path, predictions)
            logger.info(f'predictions written to {path}')
    return predictions
