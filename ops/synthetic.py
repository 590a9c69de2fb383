"""A small generated dataset whose classes differ only in temporal order.

Eight classes in four pairs; the second class of a pair is the first one played backwards
(left->right vs right->left, down vs up, growing vs shrinking, clockwise vs counterclockwise).
A pair's two classes therefore show the same distribution of single frames, so a model
without temporal modelling (TSN with average consensus) cannot beat chance within a pair,
while a temporal model can. Names follow Something-Something's style, so the flip label swap
(left <-> right, clockwise <-> counterclockwise) is exercised: a horizontally flipped
"left to right" clip is a "right to left" clip, a flipped clockwise rotation is counterclockwise.

The on-disk format is the Something-Something V1 one: ``frames/<video>/{:05d}.jpg`` frame
folders, ``train.txt`` / ``valid.txt`` lists (``<folder> <num_frames> <label>``) and
``category.txt``. Generation is deterministic in the seed.
"""
import logging
import os
import shutil
import tempfile

import cv2
import numpy as np

SYNTHETIC_CLASSES = [
    'Moving something from left to right',
    'Moving something from right to left',
    'Moving something down',
    'Moving something up',
    'Something growing',
    'Something shrinking',
    'Rotating something clockwise',
    'Rotating something counterclockwise',
]
SYNTHETIC_LAYOUT = ('category.txt', 'train.txt', 'valid.txt', 'frames')
# the forward motion of each pair; the pair's second class is the same clip reversed
_PAIR_MOTIONS = ('horizontal', 'vertical', 'scale', 'rotation')

# an arrow, so that its orientation (and hence rotation direction) is visible
_ARROW = np.array([(-1.0, -0.3), (0.3, -0.3), (0.3, -0.7), (1.0, 0.0), (0.3, 0.7), (0.3, 0.3),
                   (-1.0, 0.3)])


def _background(rng, width, height):
    """A static, smooth, low-contrast grey texture, (H, W, 3) float."""
    coarse = rng.uniform(80, 170, size=(4, 5)).astype(np.float32)
    grey = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    return np.repeat(grey[:, :, None], 3, axis=2)


def _colour(rng):
    """A saturated colour: one channel full, one off, one random (in random order)."""
    channels = np.array([255.0, 0.0, rng.uniform(0, 255)])
    return tuple(float(c) for c in rng.permutation(channels))


def _forward_clip(rng, motion, num_frames, width, height, noise=6.0):
    """Frames of one forward clip of `motion`, a list of (H, W, 3) uint8 BGR arrays."""
    background = _background(rng, width, height)
    colour = _colour(rng)
    size = rng.uniform(0.16, 0.22) * min(width, height)
    angle = rng.uniform(0, 2 * np.pi)
    cx, cy = rng.uniform(0.35, 0.65) * width, rng.uniform(0.35, 0.65) * height
    steps = np.linspace(0.0, 1.0, num_frames)
    travel = rng.uniform(0.4, 0.6)
    frames = []
    for s in steps:
        x, y, scale, theta = cx, cy, 1.0, angle
        if motion == 'horizontal':
            x = (0.5 - travel / 2 + travel * s) * width
        elif motion == 'vertical':
            y = (0.5 - travel / 2 + travel * s) * height
        elif motion == 'scale':
            scale = 0.5 + 1.0 * s
        else:  # rotation: increasing angle in image coordinates (y down) is clockwise
            theta = angle + (0.5 + travel) * np.pi * s
        rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
        points = _ARROW @ rot.T * size * scale + (x, y)
        img = background + rng.normal(0, noise, size=background.shape).astype(np.float32)
        img = np.clip(img, 0, 255).astype(np.uint8)
        cv2.fillPoly(img, [np.round(points * 16).astype(np.int32)], colour, lineType=cv2.LINE_AA,
                     shift=4)
        frames.append(img)
    return frames


def generate_synthetic(root, seed=0, train_per_class=48, val_per_class=12, width=128, height=96,
                       min_frames=10, max_frames=24):
    """Write the synthetic dataset into `root` (which must not exist yet)."""
    os.makedirs(os.path.join(root, 'frames'))
    with open(os.path.join(root, 'category.txt'), 'w') as f:
        f.write('\n'.join(SYNTHETIC_CLASSES) + '\n')
    for split_id, (list_name, per_class) in enumerate((('train.txt', train_per_class),
                                                       ('valid.txt', val_per_class))):
        lines = []
        for label in range(len(SYNTHETIC_CLASSES)):
            motion = _PAIR_MOTIONS[label // 2]
            for k in range(per_class):
                rng = np.random.default_rng([seed, split_id, label, k])
                num_frames = int(rng.integers(min_frames, max_frames + 1))
                frames = _forward_clip(rng, motion, num_frames, width, height)
                if label % 2 == 1:
                    frames = frames[::-1]
                folder = f'{list_name[:-4]}_{label}_{k:04d}'
                os.makedirs(os.path.join(root, 'frames', folder))
                for i, frame in enumerate(frames, start=1):
                    cv2.imwrite(os.path.join(root, 'frames', folder, f'{i:05d}.jpg'), frame,
                                [cv2.IMWRITE_JPEG_QUALITY, 90])
                lines.append(f'{folder} {num_frames} {label}')
        order = np.random.default_rng([seed, split_id]).permutation(len(lines))
        with open(os.path.join(root, list_name), 'w') as f:
            f.write('\n'.join(lines[i] for i in order) + '\n')
    return root


def ensure_synthetic(root, **kwargs):
    """Generate the synthetic dataset into `root` unless a complete one is there.

    The data is written to a temporary folder next to `root` and renamed into place, so an
    interrupted generation is simply redone (and concurrent processes do not collide).
    """
    if os.path.isfile(os.path.join(root, 'valid.txt')):
        return root
    parent = os.path.dirname(os.path.abspath(root))
    logging.getLogger('masnet').info(f"generating the synthetic dataset into "
                                     f"'{os.path.abspath(root)}' (first use)")
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix='.synthetic-', dir=parent)
    try:
        generate_synthetic(os.path.join(tmp, 'data'), **kwargs)
        if os.path.isdir(root):  # leftover without its lists: an incomplete old copy
            if os.path.isfile(os.path.join(root, 'valid.txt')):
                return root
            shutil.rmtree(root)
        os.rename(os.path.join(tmp, 'data'), root)
    except OSError:
        if not os.path.isfile(os.path.join(root, 'valid.txt')):
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def textured_scene(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A still ``(height, width, 3)`` uint8 frame with the structure of a natural image.

    Smooth colour gradients, flat discs and rectangles with hard edges, a fine stripe texture
    (period ~19 px) in the lower half and pixel noise: what tells resize filters apart (the
    input of the resize checks in tests/test_transforms.py and tools/bench_data.py).
    Deterministic in the seed.
    """
    rng = np.random.RandomState(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.stack([60 + 120 * xx / width, 40 + 150 * yy / height,
                    200 - 100 * (xx + yy) / (width + height)], axis=-1)  # (H, W, 3)
    for _ in range(12):
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(3, height / 4)
        img[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = rng.uniform(0, 255, 3)
    for _ in range(8):
        x, y = rng.randint(0, width - 2), rng.randint(0, height - 2)
        img[y:y + rng.randint(2, height // 3 + 3), x:x + rng.randint(2, width // 3 + 3)] = \
            rng.uniform(0, 255, 3)
    img[height // 2:] += 25 * np.sin(xx[height // 2:] / 3.0)[..., None]
    img += rng.normal(0, 8, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)
