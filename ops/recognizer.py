"""Predict with a trained model, no labels needed: the Python API behind predict.py.

    from ops.recognizer import Recognizer
    recognizer = Recognizer.from_checkpoint('ckpt.best.pth.tar')  # class names: the file's
    recognizer.predict('my_video.mp4', topk=5)      # -> Prediction (names + probabilities)
    recognizer.predict(frames)                       # decoded frames, OpenCV's BGR order
    recognizer.predict(frames, color_order='rgb')    # ... from PIL, PyAV rgb24, torchvision

Decoded frames are a list of ``(H, W, 3)`` uint8 arrays (or tensors), a ``(T, H, W, 3)`` uint8
numpy array or a ``(T, H, W, 3)`` uint8 tensor. Their channel order defaults to 'bgr', the
order of OpenCV (``cv2.VideoCapture``, ``cv2.imread``) and of every frame reader of this code
base, so frames read as predict.py and test.py read them give their scores unchanged; frames from
PIL, PyAV's ``to_ndarray(format='rgb24')``, decord, torchvision or imageio are RGB: pass
``color_order='rgb'``.

An input is a video file, a frame folder, a folder of videos / frame folders (or of class
folders of them), or a list file in the one list grammar of ops.dataset (``<path> <label>`` or
``<path> <num_frames|-> <label>``, label -1 if unknown), found as VideoRecords by
collect_inputs. Clips are sampled, cropped and averaged over views exactly as test.py does
(the same ViewProtocol, TSNDataSet, transform and ``evaluate_models``), so the same flags give
the same scores.

The file holds, in this order: the inputs (decoded frames as BGR arrays, paths as
VideoRecords), the Prediction records (the top-k classes of a video, or of a window of one)
and their writers (JSON, CSV, a Something-Something V2 submission, each written atomically),
and the Recognizer.
"""
import csv
import io
import json
import logging
import os
import re
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Union

import numpy as np
import torch

from ops.dataset import (
    UNKNOWN_LABEL,
    DataError,
    TSNDataSet,
    VideoRecord,
    ViewProtocol,
    load_checked_list,
    make_loader,
)
from ops.dataset_config import read_categories
from ops.evaluation import (
    average_views,
    check_finite_scores,
    check_view_memory,
    evaluate_models,
)
from ops.files import atomic_write
from ops.models import load_classifier
from ops.scores import softmax
from ops.transforms import build_transform
from ops.video_readers import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, count_frames

logger = logging.getLogger('masnet')

# frame names are guessed per folder later (frame_template); counting a folder does not need them
COUNT_TEMPLATE = '{:05d}.jpg'
COLOR_ORDERS = ('bgr', 'rgb')


def as_bgr_frames(frames, color_order: str = 'bgr') -> List[np.ndarray]:
    """The frames of `frames` as a list of ``(H, W, 3)`` uint8 BGR arrays.

    frames: a list / tuple of ``(H, W, 3)`` uint8 arrays or tensors, or a ``(T, H, W, 3)`` uint8
    numpy array or tensor. color_order: 'bgr' (OpenCV's) or 'rgb' (PIL's, PyAV's rgb24).
    """
    if color_order not in COLOR_ORDERS:
        raise DataError(f"color_order must be 'bgr' or 'rgb', not {color_order!r}")
    if torch.is_tensor(frames):
        frames = frames.detach().cpu().numpy()
    if isinstance(frames, np.ndarray) and frames.ndim == 4:
        frames = list(frames)  # (T, H, W, 3) -> T x (H, W, 3)
    if not isinstance(frames, (list, tuple)):
        raise DataError(f'frames must be a list of (H, W, 3) arrays or a (T, H, W, 3) array or '
                        f'tensor, not {type(frames).__name__}'
                        + (f' of shape {tuple(frames.shape)}' if hasattr(frames, 'shape') else ''))
    out = []
    for i, frame in enumerate(frames):
        frame = frame.detach().cpu().numpy() if torch.is_tensor(frame) else np.asarray(frame)
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise DataError(f'frame {i} is a {frame.dtype} array of shape {frame.shape}; frames '
                            f'must be (H, W, 3) uint8 (channels last, values 0..255)')
        out.append(np.ascontiguousarray(frame[..., ::-1]) if color_order == 'rgb' else frame)
    return out


def frame_template(folder: str, default: str) -> str:
    """The frame name template of a frame folder: `default` if its frame 1 exists, else guessed
    from the first image name (``img_00001.jpg`` -> ``img_{:05d}.jpg``)."""
    if os.path.isfile(os.path.join(folder, default.format(1))):
        return default
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTENSIONS))
    match = re.fullmatch(r'(.*?)(\d+)(\.\w+)', names[0]) if names else None
    if not match or int(match.group(2)) != 1:
        raise DataError(f"frame folder '{folder}': cannot tell how its frames are named (want "
                        f"frames numbered from 1 like '{default.format(1)}'; pass --image_tmpl)")
    prefix, digits, ext = match.groups()
    return f'{prefix}{{:0{len(digits)}d}}{ext}'


def is_video_file(path):
    return path.lower().endswith(VIDEO_EXTENSIONS)


def has_images(folder):
    return any(n.lower().endswith(IMAGE_EXTENSIONS) for n in os.listdir(folder))


def _folder_record(root, name):
    frames = count_frames(os.path.join(root, name))
    if frames == 0:
        raise DataError(f"frame folder '{os.path.join(root, name)}' holds no image file")
    return VideoRecord(name, frames, UNKNOWN_LABEL)


def _videos_in(root, sub=''):
    """Records of the video files and frame folders directly in `root/sub` (paths relative to
    `root`), without label."""
    records = []
    for name in sorted(os.listdir(os.path.join(root, sub))):
        relative = os.path.join(sub, name)
        path = os.path.join(root, relative)
        if os.path.isfile(path) and is_video_file(name):
            records.append(VideoRecord(relative, None, UNKNOWN_LABEL))
        elif os.path.isdir(path) and has_images(path):
            records.append(_folder_record(root, relative))
    return records


def _folder_records(folder, categories):
    """Records of a folder of videos / frame folders and of class folders of them.

    A class folder is a sub-folder holding videos or frame folders; when every class folder is
    named after a class of the model (`categories`), its videos carry that class as label,
    else no video has a label.
    """
    records = _videos_in(folder)
    classes = {}
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if os.path.isdir(path) and not has_images(path):
            classes[name] = _videos_in(folder, name)
    classes = {name: videos for name, videos in classes.items() if videos}
    index = {name: i for i, name in enumerate(categories or [])}
    if classes and all(name in index for name in classes):
        for name, videos in classes.items():
            for record in videos:
                record.label = index[name]
    elif classes and categories is not None:
        unknown = [name for name in classes if name not in index]
        logger.info(f"'{folder}': class folders {unknown[:3]} are not classes of the model: "
                    f"the videos carry no label")
    return records + [r for videos in classes.values() for r in videos]


def collect_inputs(source: str, root: Optional[str] = None,
                   categories: Optional[Sequence[str]] = None):
    """(root, [VideoRecord]) of a video file, frame folder, folder of videos or list file.

    root: folder the paths of a list file are relative to (default: the list's folder).
    categories: the model's class names; labels of a list must be one of them (or -1), and
        class folders named after them give their videos these labels.
    Frame counts left out of a list are filled in up front (ops.dataset.fill_frame_counts,
    kept in ``<list>.frames``).
    """
    if os.path.isfile(source) and not is_video_file(source):
        root = root if root is not None else os.path.dirname(os.path.abspath(source))
        return root, load_checked_list(
            source, root, None if categories is None else len(categories), COUNT_TEMPLATE,
            allow_unlabelled=True, probe_first=False, root_flag='--root')
    if os.path.isfile(source):
        folder, name = os.path.split(os.path.abspath(source))
        return folder, [VideoRecord(name, None, UNKNOWN_LABEL)]
    if not os.path.isdir(source):
        raise DataError(f"input '{source}' is neither a video file, a folder nor a list file")
    folder = os.path.abspath(source)
    if has_images(folder):
        parent, name = os.path.split(folder)
        return parent, [_folder_record(parent, name)]
    records = _folder_records(folder, categories)
    if not records:
        raise DataError(f"folder '{source}' holds no video file, frame folder or image")
    return folder, records


@dataclass
class Prediction:
    """Top-k classes of one video: ``indices``/``names``/``probabilities`` best first."""
    video: str
    indices: List[int]
    names: List[str]
    probabilities: List[float]
    label: int = UNKNOWN_LABEL
    extra: dict = field(default_factory=dict)  # e.g. start/end of a sliding window
    label_name: str = ''  # the class name of `label`

    @property
    def top1(self) -> int:
        return self.indices[0]

    def as_dict(self) -> dict:
        out = {'video': self.video, **self.extra}
        if self.label != UNKNOWN_LABEL:
            out['label'] = self.label
            out['label_class'] = self.label_name
        out['topk'] = [{'index': i, 'class': n, 'probability': round(p, 6)}
                       for i, n, p in zip(self.indices, self.names, self.probabilities)]
        return out

    def as_text(self) -> str:
        head = ' '.join(f'{k}={v}' for k, v in self.extra.items())
        ranked = '  '.join(f'{r}. {n} ({p:.1%})' for r, (n, p) in
                           enumerate(zip(self.names, self.probabilities), start=1))
        return f'{self.video}{" " + head if head else ""}: {ranked}'


def ranked_prediction(video: str, probabilities: np.ndarray, categories: Sequence[str],
                      topk: int = 5, label: int = UNKNOWN_LABEL, **extra) -> Prediction:
    """The Prediction of one probability vector (num_class,): its `topk` classes, best first."""
    order = np.argsort(-probabilities, kind='stable')[:min(topk, len(probabilities))]
    return Prediction(video, [int(i) for i in order], [categories[i] for i in order],
                      [float(probabilities[i]) for i in order], label, extra,
                      '' if label == UNKNOWN_LABEL else categories[label])


def write_json(path: str, predictions: List[Prediction]) -> None:
    """``[{video, [label, label_class], topk: [{index, class, probability}]}]``, written
    atomically."""
    with atomic_write(path) as f:
        f.write(json.dumps([p.as_dict() for p in predictions], indent=1).encode())


def write_csv(path: str, predictions: List[Prediction]) -> None:
    """One row per video (window): video, [window columns], label and its class name (empty
    when unknown), then class/probability of each rank."""
    extra = list(predictions[0].extra) if predictions else []
    topk = max((len(p.indices) for p in predictions), default=0)
    header = ['video'] + extra + ['label', 'label_class'] + [
        f'{c}{r}' for r in range(1, topk + 1) for c in ('class', 'probability')]
    rows = [[p.video] + [p.extra[k] for k in extra]
            + (['', ''] if p.label == UNKNOWN_LABEL else [p.label, p.label_name])
            + [v for n, q in zip(p.names, p.probabilities) for v in (n, f'{q:.6f}')]
            for p in predictions]
    _write_rows(path, [header] + rows)


def write_submission(path: str, predictions: List[Prediction]) -> None:
    """Something-Something V2 submission: ``<video id>;<class 1>;...;<class 5>`` per video, the
    id being the video's folder / file name without extension."""
    lines = []
    for p in predictions:
        if len(p.names) < 5:
            raise DataError(f'--submission needs the top 5 classes; got --topk {len(p.names)}')
        video_id = os.path.splitext(os.path.basename(p.video.rstrip('/')))[0]
        lines.append(';'.join([video_id] + p.names[:5]))
    with atomic_write(path) as f:
        f.write(('\n'.join(lines) + '\n').encode())


def _write_rows(path, rows):
    text = io.StringIO()
    csv.writer(text, lineterminator='\n').writerows(rows)
    with atomic_write(path) as f:
        f.write(text.getvalue().encode())


class Recognizer:
    """A trained TemporalModel with its class names and test-time views.

    Args:
        model: the TemporalModel (moved to `device`, put in eval mode).
        categories: class names, one per class.
        device: where the model runs.
        views: the ViewProtocol (ops.dataset) of test.py's crops, clips, sampling and softmax;
            default: made of `view_flags`, the keywords of ViewProtocol.from_flags (test.py's
            flags: test_crops=3, twice_sample=True, dense_sample=True, dense_sample_num=K,
            test_sampling='random', test_seed=S, softmax=True; full_res: the model's).
        image_tmpl: frame file names of frame folders.
    """

    def __init__(self, model, categories: Sequence[str], device=None,
                 views: Optional[ViewProtocol] = None, image_tmpl: str = '{:05d}.jpg',
                 **view_flags):
        if len(categories) != model.num_class:
            raise DataError(f'{len(categories)} class names for a model of {model.num_class} '
                            f'classes')
        full_res = model.crop_size == model.scale_size
        if views is None:
            views = ViewProtocol.from_flags(**{'full_res': full_res, **view_flags})
        if views.full_res != full_res:
            raise DataError(f'views full_res={views.full_res} for a model whose crops are '
                            f'{model.crop_size}px of {model.scale_size}px: build it with '
                            f'Recognizer.from_checkpoint(..., full_res={views.full_res})')
        self.device = torch.device(device) if device is not None else torch.device('cpu')
        self.model = model.to(self.device).eval()
        self.categories = list(categories)
        self.views = views
        self.image_tmpl = image_tmpl
        self.transform = build_transform('test', model.crop_size, model.scale_size,
                                         model.input_mean, model.input_std,
                                         num_crops=views.test_crops)

    @classmethod
    def from_checkpoint(cls, path: str, categories: Union[str, Sequence[str], None] = None,
                        num_segments: Optional[int] = None, temporal_type: Optional[str] = None,
                        arch: Optional[str] = None, input_size: Optional[int] = None,
                        device=None, given_by: Optional[str] = None,
                        required: str = 'categories= (a category file or a list of names)',
                        trust_checkpoint: bool = False, views: Optional[ViewProtocol] = None,
                        image_tmpl: str = '{:05d}.jpg', **view_flags) -> 'Recognizer':
        """Load a checkpoint as test.py does, with the class names it records.

        categories: a category file or a name list; required for checkpoints that record no
        names, else checked against theirs (a mismatch is a CheckpointError). given_by /
        required: how the caller's user gives the names, for the messages. trust_checkpoint:
        unpickle the file in full (``--trust_checkpoint``, only for files you trust).
        views / view_flags: as the constructor's (full_res=True: crops of the scale size).
        """
        if views is None:
            views = ViewProtocol.from_flags(**view_flags)
        if isinstance(categories, str):
            given_by = given_by or f"category file '{categories}'"
            categories = read_categories(categories)
        model, names, _ = load_classifier(
            path, categories, given_by or 'categories=', required, num_segments=num_segments,
            temporal_type=temporal_type, arch=arch, input_size=input_size,
            full_res=views.full_res, trust=trust_checkpoint)
        return cls(model, names, device, views, image_tmpl)

    @property
    def num_segments(self) -> int:
        return self.model.num_segments

    @property
    def num_clips(self) -> int:
        return self.views.num_clips

    def sample_indices(self, num_frames: int, key: str = 'frames') -> np.ndarray:
        """1-based frame indices of the test clips of a video of `num_frames` frames (`key`:
        the video's name, which seeds a seeded sampling)."""
        return self.views.sample_indices(num_frames, self.num_segments, key)

    def dataset(self, root: Optional[str], records: List[VideoRecord]) -> TSNDataSet:
        """The test-mode TSNDataSet of `records` (test.py's sampling and views)."""
        return TSNDataSet(root, None, self.num_segments, self.image_tmpl, self.transform,
                          random_shift=False, test_mode=True, views=self.views,
                          video_list=records)

    def probabilities(self, scores: np.ndarray) -> np.ndarray:
        """Class probabilities of view-averaged scores (N, C): softmax, unless already
        softmax scores (views.softmax)."""
        return scores if self.views.softmax else softmax(scores)

    def ranked(self, video: str, probabilities: np.ndarray, topk: int = 5,
               label: int = UNKNOWN_LABEL, **extra) -> Prediction:
        """The Prediction of one probability vector (num_class,)."""
        return ranked_prediction(video, probabilities, self.categories, topk, label, **extra)

    def scores_of_records(self, root: str, records: List[VideoRecord], batch_size: int = 1,
                          workers: int = 0) -> np.ndarray:
        """View-averaged scores (N, num_class) of `records`, with a progress bar."""
        check_view_memory(batch_size, self.views.test_crops, self.num_clips, self.num_segments,
                          self.model.crop_size, self.device)
        loader = make_loader(self.dataset(root, records), batch_size=batch_size, shuffle=False,
                             workers=min(workers, len(records)),
                             pin_memory=self.device.type == 'cuda')
        scores, _ = evaluate_models([self.model], [loader], [self.num_segments], self.device,
                                    use_softmax=self.views.softmax)
        check_finite_scores(scores[0], 'the model', [r.path for r in records])
        return scores[0]

    def clip_scores(self, frames, color_order: str = 'bgr') -> np.ndarray:
        """View-averaged scores (num_class,) of sampled frames (clips x T of them; any input
        of as_bgr_frames, in `color_order`)."""
        clip, _ = self.transform(as_bgr_frames(frames, color_order),
                                 UNKNOWN_LABEL)  # (V*clips*T*3, H, W)
        clip = clip.to(self.device).view(-1, self.num_segments * 3, *clip.shape[-2:])
        with torch.no_grad():
            scores = self.model(clip).float()[None]  # (1, V*clips, C)
        scores = average_views(scores, self.views.softmax)[0].cpu().numpy()
        check_finite_scores(scores[None], 'the model')
        return scores

    def predict_frames(self, frames, topk: int = 5, video: str = 'frames', *,
                       color_order: str = 'bgr', **extra) -> Prediction:
        """Top-k of a decoded video (all its frames, in order), sampled as a test clip.

        frames: a list of ``(H, W, 3)`` uint8 arrays / tensors, or a ``(T, H, W, 3)`` uint8
        array / tensor; color_order: their channel order, 'bgr' (OpenCV's, the default) or
        'rgb' (PIL, PyAV rgb24, torchvision).
        """
        frames = as_bgr_frames(frames, color_order)
        if not frames:
            raise DataError(f"{video}: no frame to predict on")
        picked = [frames[i - 1] for i in self.sample_indices(len(frames), video).tolist()]
        scores = self.clip_scores(picked)[None]  # (1, C)
        return self.ranked(video, self.probabilities(scores)[0], topk, **extra)

    def predict(self, source, topk: int = 5, batch_size: int = 1, workers: int = 0,
                color_order: str = 'bgr') -> Union[Prediction, List[Prediction]]:
        """Top-k of a path (one Prediction for a video/frame folder, a list for a folder of
        videos or a list file) or of decoded frames: a list of ``(H, W, 3)`` uint8 arrays, a
        ``(T, H, W, 3)`` uint8 numpy array or tensor, whose channel order is `color_order`
        ('bgr': OpenCV's and this code base's readers', the default; 'rgb': PIL's, PyAV's
        rgb24, torchvision's). Files are always read as test.py reads them."""
        if not isinstance(source, (str, os.PathLike)):
            return self.predict_frames(source, topk, color_order=color_order)
        source = os.fspath(source)
        root, records = collect_inputs(source, categories=self.categories)
        predictions = self.predict_records(root, records, topk, batch_size, workers)
        single = os.path.isfile(source) and is_video_file(source) or \
            os.path.isdir(source) and has_images(source)
        return predictions[0] if single else predictions

    def predict_records(self, root: str, records: List[VideoRecord], topk: int = 5,
                        batch_size: int = 1, workers: int = 0) -> List[Prediction]:
        """Top-k Predictions of `records` below `root`, in order."""
        folders = [r for r in records if not r.is_video_file]
        if folders:  # one template for all folders, as in a dataset
            self.image_tmpl = frame_template(os.path.join(root, folders[0].path), self.image_tmpl)
        probabilities = self.probabilities(self.scores_of_records(root, records, batch_size,
                                                                  workers))
        return [self.ranked(r.path, p, topk, r.label) for r, p in zip(records, probabilities)]


