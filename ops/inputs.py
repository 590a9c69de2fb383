"""What the Recognizer and predict.py accept as input: decoded frames (as BGR arrays), and
paths found as VideoRecords: a video file, a frame folder (its frame names guessed), a folder
of videos / frame folders (or of class folders of them, which give labels), or a list file
(read and checked by ops.dataset.load_checked_list)."""
import logging
import os
import re
from typing import List, Optional, Sequence

import numpy as np
import torch

from ops.dataset import UNKNOWN_LABEL, DataError, VideoRecord, load_checked_list
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
