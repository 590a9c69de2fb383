"""Extract JPEG frames from a tree of videos, in parallel and resumably.

    python tools/extract_frames.py VIDEOS/ FRAMES/ --short_side 256 --num_workers 8
    python tools/extract_frames.py kinetics400/ K400/img/ --dataset kinetics

Every video ``VIDEOS/<sub/folders>/<name>.<ext>`` becomes ``FRAMES/<sub/folders>/<name>/`` with
frames ``00001.jpg, 00002.jpg, ...`` (template --tmpl, or the one of --dataset's layout), so
flat folders and class-per-folder trees (Kinetics, UCF101: ``<split>/<class>/<video>``) keep
their layout. A folder is marked complete by a ``.done`` file written after its last frame, so
an interrupted run picks up where it stopped: complete folders are skipped and incomplete ones
redone. A video that decodes fewer frames than its container claims (a truncated download) is
reported and not marked complete, unless --accept_truncated.
"""
import argparse
import os
import shutil
import sys
from multiprocessing import Pool

import cv2
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ops.dataset_config import DatasetError, image_template  # noqa: E402
from ops.video_readers import VIDEO_EXTENSIONS  # noqa: E402

DONE_MARKER = '.done'
DEFAULT_TMPL = '{:05d}.jpg'


def resize_short_side(frame, short_side):
    h, w = frame.shape[:2]
    if short_side <= 0 or min(h, w) == short_side:
        return frame
    scale = short_side / min(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(frame, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)


def extract_video(video_path, out_dir, short_side=256, tmpl=DEFAULT_TMPL, quality=95,
                  accept_truncated=False):
    """Write the frames of one video.

    Returns (video, frames written, frames the container claims (0: unknown)); the folder is
    marked done unless nothing decoded, or fewer frames than claimed without `accept_truncated`.
    """
    if os.path.isfile(os.path.join(out_dir, DONE_MARKER)):
        count = len([f for f in os.listdir(out_dir) if f != DONE_MARKER])
        return video_path, count, count
    shutil.rmtree(out_dir, ignore_errors=True)
    os.makedirs(out_dir)
    capture = cv2.VideoCapture(video_path)
    claimed = max(0, int(capture.get(cv2.CAP_PROP_FRAME_COUNT)))
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
    if count and (count >= claimed or accept_truncated):
        open(os.path.join(out_dir, DONE_MARKER), 'w').close()
    return video_path, count, claimed


def _extract(job):
    return extract_video(*job)


def find_videos(video_dir, extensions=VIDEO_EXTENSIONS):
    """Paths of the videos below `video_dir`, relative to it, sorted."""
    found = []
    for folder, subfolders, files in os.walk(video_dir):
        subfolders.sort()
        rel = os.path.relpath(folder, video_dir)
        found += [os.path.normpath(os.path.join(rel, f)) for f in sorted(files)
                  if f.lower().endswith(extensions)]
    return sorted(found)


def extract_folder(video_dir, frame_dir, short_side=256, tmpl=DEFAULT_TMPL, num_workers=4,
                   extensions=VIDEO_EXTENSIONS, accept_truncated=False):
    """Extract every video below `video_dir`; returns {video path relative to video_dir: frame
    count}. Truncated videos (fewer frames than their container claims) are warned about."""
    names = find_videos(video_dir, extensions)
    jobs = [(os.path.join(video_dir, n), os.path.join(frame_dir, os.path.splitext(n)[0]),
             short_side, tmpl, 95, accept_truncated) for n in names]
    counts = {}
    with Pool(max(1, num_workers)) as pool:
        for video, count, claimed in tqdm(pool.imap_unordered(_extract, jobs), total=len(jobs),
                                          desc='extract', unit='video'):
            name = os.path.relpath(video, video_dir)
            counts[name] = count
            if 0 < count < claimed:
                print(f'warning: {video}: {count} frames decode, the container claims {claimed} '
                      f'(truncated?): ' + ('kept (--accept_truncated)' if accept_truncated else
                                           'not marked done; re-download it, or pass '
                                           '--accept_truncated to keep it'), file=sys.stderr)
    return counts


def frame_template(tmpl, dataset):
    """The frame template: --tmpl, or --dataset's; both given and different is an error."""
    if dataset is None:
        return tmpl or DEFAULT_TMPL
    layout_tmpl = image_template(dataset)
    if tmpl is not None and tmpl != layout_tmpl:
        raise DatasetError(f"--tmpl '{tmpl}' differs from the template '{layout_tmpl}' the "
                           f"{dataset} layout reads: drop --tmpl, or --dataset")
    return layout_tmpl


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('video_dir')
    parser.add_argument('frame_dir')
    parser.add_argument('--short_side', type=int, default=256, help='0 keeps the original size')
    parser.add_argument('--tmpl', default=None,
                        help=f"frame file name template (default: --dataset's, else "
                             f"{DEFAULT_TMPL})")
    parser.add_argument('--dataset', default=None,
                        help="name the frames as this dataset's layout reads them (e.g. kinetics: "
                             "img_{:05d}.jpg)")
    parser.add_argument('--num_workers', type=int, default=os.cpu_count())
    parser.add_argument('--accept_truncated', action='store_true',
                        help='mark videos that decode fewer frames than claimed as done')
    args = parser.parse_args(argv)
    if not os.path.isdir(args.video_dir):
        sys.exit(f"extract_frames.py: error: video folder '{args.video_dir}' does not exist")
    try:
        tmpl = frame_template(args.tmpl, args.dataset)
    except DatasetError as exc:
        sys.exit(f'extract_frames.py: error: {exc}')
    counts = extract_folder(args.video_dir, args.frame_dir, args.short_side, tmpl,
                            args.num_workers, accept_truncated=args.accept_truncated)
    failed = sorted(v for v, c in counts.items() if c == 0)
    print(f'{len(counts) - len(failed)} videos extracted to {args.frame_dir}, '
          f'{sum(counts.values())} frames')
    for video in failed:
        print(f'could not decode {video}', file=sys.stderr)
    return counts


if __name__ == '__main__':
    main()
