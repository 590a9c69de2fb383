"""Group transforms: every frame of a clip gets the same geometry.

Frames are ``(H, W, 3)`` uint8 BGR numpy arrays, as OpenCV decodes them; the tensors made
from them are RGB. Crops are numpy views and only the crop is resized. Every resize is PIL's
bilinear filter, as in the release's PIL/torchvision pipeline: a triangle filter whose support
grows with the downscaling factor, so downscaling anti-aliases (OpenCV's INTER_LINEAR does not,
and is far off on large frames: docs/differences.md). ``resize_group`` computes it with torch's
SIMD uint8 anti-aliased bilinear kernel, one call per group: it matches Pillow's
``Image.resize(..., BILINEAR)`` within one grey level except about one value in a million, two
levels off where its int16 weights round a near-tie the other way from Pillow's 22-bit ones
(tests/test_transforms.py). Pillow itself would be exact but slower.
The BGR -> RGB swap, float conversion and ImageNet normalisation are one pass per channel.
``build_transform`` assembles the train / val / test pipelines; each is a callable
``(frames, label) -> (tensor, label)`` where the tensor is ``(V*F*3, H, W)`` float32 for V views
(crops) of F frames, crop-major.
"""
import random
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
import torch.nn.functional as F

# normalisation of every input: torchvision's ImageNet statistics (RGB, values in [0, 1])
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def resize_group(frames: list, width: int, height: int) -> list:
    """Resize frames of one size to ``width x height`` with PIL's bilinear filter.

    frames: ``(h, w, 3)`` uint8 arrays (views allowed). Returns them unchanged when they already
    have the size, else a list of ``(height, width, 3)`` uint8 arrays. The triangle filter's
    support is one source pixel, times the scale factor when downscaling (anti-aliasing), as in
    Pillow (see the module docstring for how close). Channels are filtered independently, so BGR
    frames give the BGR of the RGB result. One call for the group; stacking the frames (crop
    views) is the only copy of the input.
    """
    h, w = frames[0].shape[:2]
    if (w, h) == (width, height):
        return frames
    batch = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2)  # (F, 3, h, w), channels last
    batch = batch.contiguous(memory_format=torch.channels_last)  # no copy; the fast uint8 kernel
    out = F.interpolate(batch, size=(height, width), mode='bilinear', antialias=True,
                        align_corners=False)  # (F, 3, height, width) uint8
    return list(out.permute(0, 2, 3, 1).numpy())  # F x (height, width, 3)


def fixed_offsets(image_w: int, image_h: int, crop_w: int, crop_h: int,
                  more_fix_crop: bool = True) -> List[Tuple[int, int]]:
    """The (x, y) crop corners of TSN's fixed-offset cropping.

    Five offsets (four corners + center), or thirteen with ``more_fix_crop`` (adding the
    edge midpoints and the four quarter points).
    """
    w_step = (image_w - crop_w) // 4
    h_step = (image_h - crop_h) // 4
    offsets = [(0, 0), (4 * w_step, 0), (0, 4 * h_step), (4 * w_step, 4 * h_step),
               (2 * w_step, 2 * h_step)]
    if more_fix_crop:
        offsets += [(0, 2 * h_step), (4 * w_step, 2 * h_step), (2 * w_step, 4 * h_step),
                    (2 * w_step, 0), (1 * w_step, 1 * h_step), (3 * w_step, 1 * h_step),
                    (1 * w_step, 3 * h_step), (3 * w_step, 3 * h_step)]
    return offsets


class GroupMultiScaleCrop:
    """Random crop whose sides are picked from ``scales`` x short side, then resized.

    Width and height scales differ by at most ``max_distort`` steps; the corner is one of
    the 13 fixed offsets. Output frames are ``size x size``.
    """

    def __init__(self, size, scales=(1, .875, .75, .66), max_distort=1, more_fix_crop=True):
        self.size = size
        self.scales = scales
        self.max_distort = max_distort
        self.more_fix_crop = more_fix_crop

    def crop_box(self, image_w, image_h, rng=random):
        base = min(image_w, image_h)
        sizes = [int(base * s) for s in self.scales]
        sizes = [self.size if abs(s - self.size) < 3 else s for s in sizes]
        pairs = [(w, h) for i, h in enumerate(sizes) for j, w in enumerate(sizes)
                 if abs(i - j) <= self.max_distort]
        crop_w, crop_h = rng.choice(pairs)
        x, y = rng.choice(fixed_offsets(image_w, image_h, crop_w, crop_h, self.more_fix_crop))
        return x, y, crop_w, crop_h

    def __call__(self, frames, rng=random):
        h, w = frames[0].shape[:2]
        x, y, cw, ch = self.crop_box(w, h, rng)
        return resize_group([f[y:y + ch, x:x + cw] for f in frames], self.size, self.size)


class GroupRandomHorizontalFlip:
    """Flip all frames with probability 0.5, mapping the label to its mirror class.

    mirror_map: ``{label: mirrored label}`` for classes whose meaning a flip changes
    (e.g. "from left to right" <-> "from right to left"); other labels stay.
    """

    def __init__(self, mirror_map=None, p=0.5):
        self.mirror_map = mirror_map or {}
        self.p = p

    def __call__(self, frames, label):
        if random.random() < self.p:
            frames = [cv2.flip(f, 1) for f in frames]  # a copy: mirrored views stack slower
            label = self.mirror_map.get(label, label)
        return frames, label


class GroupScale:
    """Resize so that the short side is ``size`` (aspect ratio kept)."""

    def __init__(self, size):
        self.size = size

    def __call__(self, frames):
        h, w = frames[0].shape[:2]
        if w <= h:
            new_w, new_h = self.size, int(self.size * h / w)
        else:
            new_w, new_h = int(self.size * w / h), self.size
        return resize_group(frames, new_w, new_h)


class GroupCenterCrop:
    """Center ``size x size`` crop."""

    def __init__(self, size):
        self.size = size

    def __call__(self, frames):
        h, w = frames[0].shape[:2]
        x = int(round((w - self.size) / 2.0))
        y = int(round((h - self.size) / 2.0))
        return [f[y:y + self.size, x:x + self.size] for f in frames]


class GroupFullResSample:
    """Three ``size x size`` crops along the long side, in steps of a quarter of the free space:
    the release's left, right, center at the vertical offset ``2 * ((h - size) // 4)``; on
    portrait frames top, bottom, center (the release's three crops coincide there).

    Returns a list of three frame lists.
    """

    def __init__(self, size):
        self.size = size

    def offsets(self, image_w, image_h):
        w_step, h_step = (image_w - self.size) // 4, (image_h - self.size) // 4
        if image_w >= image_h:
            return [(0, 2 * h_step), (4 * w_step, 2 * h_step), (2 * w_step, 2 * h_step)]
        return [(2 * w_step, 0), (2 * w_step, 4 * h_step), (2 * w_step, 2 * h_step)]

    def __call__(self, frames):
        h, w = frames[0].shape[:2]
        return [[f[y:y + self.size, x:x + self.size] for f in frames]
                for x, y in self.offsets(w, h)]


class GroupOverSample:
    """Four corner crops + center (5 views), plus their horizontal flips with ``flip`` (10)."""

    def __init__(self, size, flip=False):
        self.size = size
        self.flip = flip

    def __call__(self, frames):
        h, w = frames[0].shape[:2]
        views = [[f[y:y + self.size, x:x + self.size] for f in frames]
                 for x, y in fixed_offsets(w, h, self.size, self.size, more_fix_crop=False)]
        if self.flip:
            views += [[cv2.flip(f, 1) for f in view] for view in views]
        return views


class ToNormalizedTensor:
    """Stack views of BGR frames into an RGB ``(V*F*3, H, W)`` float32 tensor of
    ``(x/255 - mean)/std``."""

    def __init__(self, mean, std):
        self.scale = [1.0 / (255.0 * s) for s in std]
        self.shift = [m / s for m, s in zip(mean, std)]

    def __call__(self, views):
        frames = [f for view in views for f in view]  # V*F x (H, W, 3) uint8 BGR
        out = np.empty((len(frames), 3) + frames[0].shape[:2], np.float32)  # (V*F, 3, H, W)
        for frame, planes in zip(frames, out):
            bgr = cv2.split(frame)
            for c in range(3):  # RGB plane c = BGR plane 2 - c, times scale minus shift, one pass
                cv2.addWeighted(bgr[2 - c], self.scale[c], bgr[2 - c], 0.0, -self.shift[c],
                                dst=planes[c], dtype=cv2.CV_32F)
        return torch.from_numpy(out).view(-1, *out.shape[2:])  # (V*F*3, H, W)


class TrainTransform:
    """Multi-scale crop -> resize -> (mirror-aware) random flip -> normalised tensor."""

    def __init__(self, crop_size, mean, std, flip=True, mirror_map=None):
        self.crop = GroupMultiScaleCrop(crop_size)
        self.flip = GroupRandomHorizontalFlip(mirror_map) if flip else None
        self.to_tensor = ToNormalizedTensor(mean, std)

    def __call__(self, frames, label):
        frames = self.crop(frames)
        if self.flip is not None:
            frames, label = self.flip(frames, label)
        return self.to_tensor([frames]), label


class EvalTransform:
    """Scale the short side, take the crop views of ``num_crops``, normalise."""

    def __init__(self, crop_size, scale_size, mean, std, num_crops=1):
        if num_crops not in (1, 3, 5, 10):
            raise ValueError(f'--test_crops must be 1, 3, 5 or 10, got {num_crops}')
        self.scale = GroupScale(scale_size)
        if num_crops == 1:
            self.views = GroupCenterCrop(crop_size)
        elif num_crops == 3:
            self.views = GroupFullResSample(crop_size)
        else:
            self.views = GroupOverSample(crop_size, flip=num_crops == 10)
        self.to_tensor = ToNormalizedTensor(mean, std)

    def __call__(self, frames, label):
        views = self.views(self.scale(frames))
        if isinstance(self.views, GroupCenterCrop):
            views = [views]
        return self.to_tensor(views), label


def build_transform(mode: str, crop_size: int, scale_size: int, mean: Sequence[float],
                    std: Sequence[float], flip: bool = True,
                    mirror_map: Optional[Dict[int, int]] = None, num_crops: int = 1):
    """The clip transform of `mode` ('train', 'val' or 'test').

    train: multi-scale crop (scales 1, .875, .75, .66 of the short side, 13 fixed offsets) to
        crop_size, random flip (labels of mirror classes swapped) unless flip is False.
    val:   short side to scale_size, center crop.
    test:  short side to scale_size, then num_crops views: 1 center, 3 full-res
        (left/right/center as the release, top/bottom/center on portrait frames), 5 corners +
        center, 10 = 5 + flips.
    Returns a callable ``(frames, label) -> (Tensor (V*F*3, crop, crop), label)``.
    """
    if mode == 'train':
        return TrainTransform(crop_size, mean, std, flip=flip, mirror_map=mirror_map)
    if mode == 'val':
        return EvalTransform(crop_size, scale_size, mean, std, num_crops=1)
    if mode == 'test':
        return EvalTransform(crop_size, scale_size, mean, std, num_crops=num_crops)
    raise ValueError(f"unknown transform mode '{mode}' (train, val or test)")
