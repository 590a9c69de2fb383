"""Speed of the training input pipeline against a PIL-per-frame TSN pipeline, in one process.

    python tools/bench_data.py --clips 200

Both decode 8 JPEG frames of 320x240, take the same multi-scale crop, resize it to 224,
flip, stack and normalise to a (24, 224, 224) float tensor; the baseline does it the way
TSN/TSM do (PIL open/convert, crop, resize, per-frame arrays stacked, per-channel
normalisation loop), ours is ops.dataset + ops.transforms. One process, no loader workers.
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

from ops.video_readers import decode_image_file  # noqa: E402
from ops.transforms import GroupMultiScaleCrop, build_transform  # noqa: E402

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def write_frames(folder, count, width=320, height=240):
    rng = np.random.RandomState(0)
    paths = []
    for i in range(count):
        img = cv2.resize(rng.randint(0, 255, (12, 16, 3)).astype(np.uint8), (width, height),
                         interpolation=cv2.INTER_CUBIC)
        path = os.path.join(folder, f'{i + 1:05d}.jpg')
        cv2.imwrite(path, img, [cv2.IMWRITE_JPEG_QUALITY, 90])
        paths.append(path)
    return paths


def pil_pipeline(paths, size=224):
    """TSN-style: PIL per frame, crop, resize, flip, stack, per-channel normalisation loop."""
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
    frames = [decode_image_file(p) for p in paths]
    return transform(frames, 0)[0]


def clips_per_second(fn, clips):
    start = time.perf_counter()
    for _ in range(clips):
        fn()
    return clips / (time.perf_counter() - start)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--clips', type=int, default=200)
    parser.add_argument('--frames', type=int, default=8)
    args = parser.parse_args(argv)
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    transform = build_transform('train', 224, 256, MEAN, STD, flip=True)
    with tempfile.TemporaryDirectory() as folder:
        paths = write_frames(folder, args.frames)
        decode_only = clips_per_second(lambda: [decode_image_file(p) for p in paths], args.clips)
        baseline, ours = [], []
        for _ in range(3):  # interleaved rounds
            baseline.append(clips_per_second(lambda: pil_pipeline(paths), args.clips // 3))
            ours.append(clips_per_second(lambda: our_pipeline(paths, transform), args.clips // 3))
    base, fast = float(np.median(baseline)), float(np.median(ours))
    print(f'{args.frames} frames of 320x240 JPEG -> ({args.frames * 3}, 224, 224), 1 thread')
    print(f'JPEG decoding alone: {1000 / decode_only:.1f} ms/clip')
    print(f'PIL-per-frame TSN pipeline: {base:.1f} clips/s ({1000 / base:.1f} ms/clip)')
    print(f'ops.transforms pipeline:    {fast:.1f} clips/s ({1000 / fast:.1f} ms/clip), '
          f'{fast / base:.2f}x')


if __name__ == '__main__':
    main()
