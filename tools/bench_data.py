"""Speed of the training input pipeline against the release's PIL pipeline, in one process.

    python tools/bench_data.py --clips 300

Both decode 8 JPEG frames (320x240 unless --width/--height), take a multi-scale crop, resize it
to 224, flip, stack and normalise to a (24, 224, 224) float tensor; the baseline does it the way
the release (TSN/TSM) does (PIL open/convert, crop, resize with PIL's bilinear filter, per-frame
arrays stacked, per-channel normalisation loop), ours is ops.dataset + ops.transforms. One
process, no loader workers. Also prints the largest difference between the two pipelines'
tensors for the same crop boxes and flips: one grey level, two on rare rounding ties (see
ops/transforms.py).
"""
import argparse
import os
import random
import sys
import tempfile
import time

import cv2
import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ops.dataset import _decode_jpeg_file  # noqa: E402
from ops.synthetic import textured_scene  # noqa: E402
from ops.transforms import IMAGENET_MEAN, IMAGENET_STD, GroupMultiScaleCrop, build_transform  # noqa: E402

MEAN, STD = IMAGENET_MEAN, IMAGENET_STD


def write_frames(folder, count, width=320, height=240):
    paths = []
    for i in range(count):
        img = textured_scene(width, height, seed=i)
        path = os.path.join(folder, f'{i + 1:05d}.jpg')
        cv2.imwrite(path, img, [cv2.IMWRITE_JPEG_QUALITY, 90])
        paths.append(path)
    return paths


def pil_pipeline(paths, size=224):
    """The release's: PIL per frame, crop, bilinear resize, flip, stack, per-channel loop.

    Draws the crop box, then the flip, from `random`, in the order ops.transforms does.
    """
    images = [Image.open(p).convert('RGB') for p in paths]
    x, y, w, h = GroupMultiScaleCrop(size).crop_box(*images[0].size)
    images = [im.crop((x, y, x + w, y + h)).resize((size, size), Image.BILINEAR) for im in images]
    if random.random() < 0.5:
        images = [im.transpose(Image.FLIP_LEFT_RIGHT) for im in images]
    stacked = np.concatenate([np.array(im) for im in images], axis=2)  # (H, W, 3T)
    tensor = torch.from_numpy(stacked).permute(2, 0, 1).contiguous().float().div(255)
    for channel, m, s in zip(tensor, MEAN * len(paths), STD * len(paths)):
        channel.sub_(m).div_(s)
    return tensor


def our_pipeline(paths, transform):
    frames = [_decode_jpeg_file(p) for p in paths]
    return transform(frames, 0)[0]


def max_difference(paths, transform, clips=20):
    """Largest |baseline - ours| over `clips` seeded crop boxes and flips.

    Returns it after normalisation and in grey levels (times 255 std of its channel).
    """
    largest = np.zeros(3)
    for seed in range(clips):
        random.seed(seed)
        baseline = pil_pipeline(paths)
        random.seed(seed)
        ours = our_pipeline(paths, transform)
        diff = (baseline - ours).abs().view(-1, 3, *ours.shape[1:])  # (T, 3, H, W), RGB
        largest = np.maximum(largest, diff.amax(dim=(0, 2, 3)).numpy())
    return float(largest.max()), float((largest * 255 * np.array(STD)).max())


def clips_per_second(fn, clips):
    start = time.perf_counter()
    for _ in range(clips):
        fn()
    return clips / (time.perf_counter() - start)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--clips', type=int, default=200)
    parser.add_argument('--frames', type=int, default=8)
    parser.add_argument('--width', type=int, default=320)
    parser.add_argument('--height', type=int, default=240)
    args = parser.parse_args(argv)
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    transform = build_transform('train', 224, 256, MEAN, STD, flip=True)
    with tempfile.TemporaryDirectory() as folder:
        paths = write_frames(folder, args.frames, args.width, args.height)
        normalised, grey = max_difference(paths, transform)
        decode_only = clips_per_second(lambda: [_decode_jpeg_file(p) for p in paths], args.clips)
        baseline, ours = [], []
        for _ in range(3):  # interleaved rounds
            baseline.append(clips_per_second(lambda: pil_pipeline(paths), args.clips // 3))
            ours.append(clips_per_second(lambda: our_pipeline(paths, transform), args.clips // 3))
    base, fast = float(np.median(baseline)), float(np.median(ours))
    print(f'{args.frames} frames of {args.width}x{args.height} JPEG -> '
          f'({args.frames * 3}, 224, 224), 1 thread')
    print(f'JPEG decoding alone: {1000 / decode_only:.1f} ms/clip')
    print(f"release's PIL pipeline:  {base:.1f} clips/s ({1000 / base:.1f} ms/clip)")
    print(f'ops.transforms pipeline: {fast:.1f} clips/s ({1000 / fast:.1f} ms/clip), '
          f'{fast / base:.2f}x')
    print(f'max |PIL pipeline - ours|, same crops and flips: {normalised:.4f} after normalisation '
          f'({grey:.2f} grey levels)')


if __name__ == '__main__':
    main()
