"""Extract JPEG frames from a folder of videos, in parallel and resumably.

    python tools/extract_frames.py VIDEOS/ FRAMES/ --short_side 256 --num_workers 8

Every video ``VIDEOS/<name>.<ext>`` becomes ``FRAMES/<name>/00001.jpg, 00002.jpg, ...``
(template --tmpl). A folder is marked complete by a ``.done`` file written after its last
frame, so an interrupted run picks up where it stopped: complete folders are skipped and
incomplete ones redone.
"""
import argparse
import os
import shutil
import sys
from multiprocessing import Pool

import cv2
from tqdm import tqdm

DONE_MARKER = '.done'
VIDEO_EXTENSIONS = ('.mp4', '.webm', '.avi', '.mkv', '.mov', '.m4v')


def resize_short_side(frame, short_side):
    h, w = frame.shape[:2]
    if short_side <= 0 or min(h, w) == short_side:
        return frame
    scale = short_side / min(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(frame, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)


def extract_video(video_path, out_dir, short_side=256, tmpl='{:05d}.jpg', quality=95):
    """Write the frames of one video; returns (video, frame count), count 0 if undecodable."""
    if os.path.isfile(os.path.join(out_dir, DONE_MARKER)):
        return video_path, len([f for f in os.listdir(out_dir) if f != DONE_MARKER])
    shutil.rmtree(out_dir, ignore_errors=True)
    os.makedirs(out_dir)
    capture = cv2.VideoCapture(video_path)
    count = 0
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            count += 1
            cv2.imwrite(os.path.join(out_dir, tmpl.format(count)),
                        resize_short_side(frame, short_side), [cv2.IMWRITE_JPEG_QUALITY, quality])
    finally:
        capture.release()
    if count:
        open(os.path.join(out_dir, DONE_MARKER), 'w').close()
    return video_path, count


def _extract(job):
    return extract_video(*job)


def extract_folder(video_dir, frame_dir, short_side=256, tmpl='{:05d}.jpg', num_workers=4,
                   extensions=VIDEO_EXTENSIONS):
    """Extract every video of `video_dir`; returns {video name: frame count}."""
    names = sorted(f for f in os.listdir(video_dir) if f.lower().endswith(extensions))
    jobs = [(os.path.join(video_dir, n), os.path.join(frame_dir, os.path.splitext(n)[0]),
             short_side, tmpl) for n in names]
    counts = {}
    with Pool(max(1, num_workers)) as pool:
        for video, count in tqdm(pool.imap_unordered(_extract, jobs), total=len(jobs),
                                 desc='extract', unit='video'):
            counts[os.path.basename(video)] = count
    return counts


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('video_dir')
    parser.add_argument('frame_dir')
    parser.add_argument('--short_side', type=int, default=256, help='0 keeps the original size')
    parser.add_argument('--tmpl', default='{:05d}.jpg', help='frame file name template')
    parser.add_argument('--num_workers', type=int, default=os.cpu_count())
    args = parser.parse_args(argv)
    if not os.path.isdir(args.video_dir):
        sys.exit(f"extract_frames.py: error: video folder '{args.video_dir}' does not exist")
    counts = extract_folder(args.video_dir, args.frame_dir, args.short_side, args.tmpl,
                            args.num_workers)
    failed = sorted(v for v, c in counts.items() if c == 0)
    print(f'{len(counts) - len(failed)} videos extracted to {args.frame_dir}, '
          f'{sum(counts.values())} frames')
    for video in failed:
        print(f'could not decode {video}', file=sys.stderr)
    return counts


if __name__ == '__main__':
    main()
