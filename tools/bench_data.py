"""Speed of the training input pipeline against the release's PIL pipeline, in one process;
with --videos, the speed of each video decoder backend.

    python tools/bench_data.py --clips 300
    python tools/bench_data.py --videos --clips 10

Both decode 8 JPEG frames (320x240 unless --width/--height), take a multi-scale crop, resize it
to 224, flip, stack and normalise to a (24, 224, 224) float tensor; the baseline does it the way
the release (TSN/TSM) does (PIL open/convert, crop, resize with PIL's bilinear filter, per-frame
arrays stacked, per-channel normalisation loop), ours is ops.dataset + ops.transforms. One
process, no loader workers. Also prints the largest difference between the two pipelines'
tensors for the same crop boxes and flips: one grey level, two on rare rounding ties (see
ops/transforms.py).

--videos generates H.264 videos (libx264, its default keyframe interval of 250 frames, 25 fps):
a short one (10 s, 320x240) and two long ones (60 s, 340x256 and 1280x720), and reports for
every installed backend the median ms per 8-frame clip with TSN training sampling (one random
frame per segment), decoding only and through the full training transform, in one process;
then clips/s of a DataLoader with 2 workers on the long 340x256 video.
"""
import argparse
import os
import random
import tempfile
import time

import cv2
import numpy as np
import torch
from PIL import Image

from ops.cli import HelpFormatter
from ops.dataset import TSNDataSet, VideoRecord, sample_train_indices
from ops.synthetic import textured_scene
from ops.transforms import IMAGENET_MEAN, IMAGENET_STD, GroupMultiScaleCrop, build_transform
from ops.video_readers import backend_available, decode_image_file, open_reader

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
    frames = [decode_image_file(p) for p in paths]
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


BENCH_VIDEOS = (('short 10 s 320x240', 250, 320, 240), ('long 60 s 340x256', 1500, 340, 256),
                ('long 60 s 1280x720', 1500, 1280, 720))


def write_h264(path, count, width, height, fps=25):
    """A video of `count` frames of a moving texture (libx264, default keyframe interval)."""
    import av
    rng = np.random.RandomState(0)
    texture = cv2.resize(rng.randint(0, 255, (24, 64, 3)).astype(np.uint8), (width * 2, height),
                         interpolation=cv2.INTER_CUBIC)
    with av.open(path, 'w') as container:
        stream = container.add_stream('libx264', rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, 'yuv420p'
        stream.options = {'preset': 'veryfast'}
        for i in range(count):
            shift = (i * 3) % width
            frame = av.VideoFrame.from_ndarray(texture[:, shift:shift + width].copy(), 'bgr24')
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def ms_per_clip(path, num_frames, backend, clips, transform=None, segments=8):
    """Median ms to open `path` and read one TSN training clip (and transform it)."""
    rng = np.random.RandomState(0)
    times = []
    for _ in range(clips):
        indices = sample_train_indices(num_frames, segments, rng).tolist()
        start = time.perf_counter()
        with open_reader(path, True, backend=backend) as reader:
            got = reader.read(indices)
        frames = [got[i] for i in indices]
        if transform is not None:
            transform(frames, 0)
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def loader_clips_per_second(path, num_frames, backend, transform, clips, workers=2):
    """Clips/s of a DataLoader (2 workers, batch 1) of TSNDataSet on one video listed `clips`
    times."""
    from torch.utils.data import DataLoader
    records = [VideoRecord(os.path.basename(path), num_frames, 0) for _ in range(clips)]
    dataset = TSNDataSet(os.path.dirname(path), None, 8, transform=transform, video_list=records,
                         video_backend=backend)
    loader = DataLoader(dataset, batch_size=1, num_workers=workers)
    start = time.perf_counter()
    for _ in loader:
        pass
    return clips / (time.perf_counter() - start)


def bench_videos(clips):
    backends = [b for b in ('opencv', 'pyav', 'decord') if backend_available(b)]
    transform = build_transform('train', 224, 256, MEAN, STD, flip=True)
    with tempfile.TemporaryDirectory() as folder:
        paths = []
        for name, count, width, height in BENCH_VIDEOS:
            paths.append(os.path.join(folder, f'{width}x{height}_{count}.mp4'))
            write_h264(paths[-1], count, width, height)
        print(f'ms per 8-frame clip (TSN train sampling, median of {clips}, 1 process)')
        print('| video | ' + ' | '.join(f'{b} decode / +transform' for b in backends) + ' |')
        print('|---|' + '---|' * len(backends))
        for (name, count, _, _), path in zip(BENCH_VIDEOS, paths):
            cells = [f'{ms_per_clip(path, count, b, clips):.1f} / '
                     f'{ms_per_clip(path, count, b, clips, transform):.1f}' for b in backends]
            print(f'| {name}, {count} frames | ' + ' | '.join(cells) + ' |', flush=True)
        _, count, width, height = BENCH_VIDEOS[1]
        rates = [f'{b} {loader_clips_per_second(paths[1], count, b, transform, 4 * clips):.1f}'
                 for b in backends]
        print(f'DataLoader, 2 workers, {width}x{height} {count} frames, full transform: '
              f'clips/s ' + ', '.join(rates))


def main(argv=None):
    parser = argparse.ArgumentParser(formatter_class=HelpFormatter,
                                     description=__doc__.splitlines()[0])
    parser.add_argument('--clips', type=int, default=200)
    parser.add_argument('--frames', type=int, default=8)
    parser.add_argument('--width', type=int, default=320)
    parser.add_argument('--height', type=int, default=240)
    parser.add_argument('--videos', action='store_true', help='benchmark the video decoders')
    args = parser.parse_args(argv)
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    if args.videos:
        return bench_videos(args.clips)
    transform = build_transform('train', 224, 256, MEAN, STD, flip=True)
    with tempfile.TemporaryDirectory() as folder:
        paths = write_frames(folder, args.frames, args.width, args.height)
        normalised, grey = max_difference(paths, transform)
        decode_only = clips_per_second(lambda: [decode_image_file(p) for p in paths], args.clips)
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
