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

A video that fails (nothing decodes, or truncated without --accept_truncated) leaves no folder
behind, so gen_label.py never lists it. The run ends with the count of failures, one line per
failed video on stderr and exit status 1 when there is one; --write-clean LIST writes the list
of the complete frame folders (``<folder> <num_frames> -1`` lines, label unknown).
"""
import argparse
import io
import os
import shutil
import sys
from multiprocessing import Pool

import cv2
from tqdm import tqdm

from ops.cli import HelpFormatter
from ops.dataset_config import DatasetError, image_template
from ops.files import atomic_write
from ops.video_readers import VIDEO_EXTENSIONS

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

    Returns (video, frames decoded, frames the container claims (0: unknown)); the folder is
    marked done unless nothing decoded, or fewer frames than claimed without `accept_truncated`,
    in which case it is removed.
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
    else:
        shutil.rmtree(out_dir)
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
    """Extract every video below `video_dir`; returns {video path relative to video_dir: frames
    decoded}. Truncated videos (fewer frames than their container claims) are warned about;
    failed ones (failed_videos) leave no folder, nor an empty parent folder."""
    names = find_videos(video_dir, extensions)
    jobs = [(os.path.join(video_dir, n), frame_folder(frame_dir, n), short_side, tmpl, 95,
             accept_truncated) for n in names]
    counts = {}
    with Pool(max(1, num_workers)) as pool:
        for video, count, claimed in tqdm(pool.imap_unordered(_extract, jobs), total=len(jobs),
                                          desc='extract', unit='video'):
            name = os.path.relpath(video, video_dir)
            counts[name] = count
            if 0 < count < claimed:
                print(f'warning: {video}: {count} frames decode, the container claims {claimed} '
                      f'(truncated?): ' + ('kept (--accept_truncated)' if accept_truncated else
                                           'not kept; re-download it, or pass '
                                           '--accept_truncated to keep it'), file=sys.stderr)
    for name in failed_videos(frame_dir, counts):
        parent = os.path.dirname(frame_folder(frame_dir, name))
        while os.path.normpath(parent) != os.path.normpath(frame_dir) and os.path.isdir(parent) \
                and not os.listdir(parent):
            os.rmdir(parent)
            parent = os.path.dirname(parent)
    return counts


def frame_folder(frame_dir, name):
    """The frame folder of the video `name` (relative to the video folder)."""
    return os.path.join(frame_dir, os.path.splitext(name)[0])


def failed_videos(frame_dir, counts):
    """The videos of `counts` whose frame folder is not complete, sorted."""
    return sorted(n for n in counts
                  if not os.path.isfile(os.path.join(frame_folder(frame_dir, n), DONE_MARKER)))


def write_clean_list(path, frame_dir, counts):
    """Write ``<folder> <num_frames> -1`` for every complete frame folder, atomically."""
    failed = set(failed_videos(frame_dir, counts))
    text = io.StringIO()
    for name in sorted(counts):
        if name not in failed:
            folder = os.path.splitext(name)[0].replace(os.sep, '/')
            text.write(f'{folder} {counts[name]} -1\n')
    with atomic_write(path) as f:
        f.write(text.getvalue().encode())


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
    parser = argparse.ArgumentParser(formatter_class=HelpFormatter,
                                     description=__doc__.splitlines()[0])
    parser.add_argument('video_dir')
    parser.add_argument('frame_dir')
    parser.add_argument('--short_side', type=int, default=256, help='0 keeps the original size')
    parser.add_argument('--tmpl', default=None,
                        help=f"frame file name template (default: --dataset's, else "
                             f"{DEFAULT_TMPL})")
    parser.add_argument('--dataset', default=None,
                        help="name the frames as this dataset's layout reads them (e.g. kinetics: "
                             "img_{:05d}.jpg)")
    parser.add_argument('--num_workers', '-j', '--workers', dest='num_workers', type=int,
                        default=os.cpu_count(), help='processes extracting videos')
    parser.add_argument('--accept_truncated', action='store_true',
                        help='mark videos that decode fewer frames than claimed as done')
    parser.add_argument('--write-clean', dest='write_clean', metavar='LIST', default=None,
                        help="write the complete frame folders to LIST, '<folder> <num_frames> "
                             "-1' per line (failed videos left out)")
    args = parser.parse_args(argv)
    if not os.path.isdir(args.video_dir):
        sys.exit(f"extract_frames.py: error: video folder '{args.video_dir}' does not exist")
    try:
        tmpl = frame_template(args.tmpl, args.dataset)
    except DatasetError as exc:
        sys.exit(f'extract_frames.py: error: {exc}')
    counts = extract_folder(args.video_dir, args.frame_dir, args.short_side, tmpl,
                            args.num_workers, accept_truncated=args.accept_truncated)
    failed = failed_videos(args.frame_dir, counts)
    for video in failed:
        reason = 'no frame decodes' if counts[video] == 0 else 'truncated'
        print(f'failed: {video} ({reason})', file=sys.stderr)
    print(f'{len(counts) - len(failed)} videos extracted to {args.frame_dir}, '
          f'{sum(c for v, c in counts.items() if v not in failed)} frames; '
          f'{len(failed)} failed')
    if args.write_clean:
        write_clean_list(args.write_clean, args.frame_dir, counts)
        print(f'{len(counts) - len(failed)} complete frame folders listed in {args.write_clean}')
    return counts, failed


if __name__ == '__main__':
    sys.exit(1 if main()[1] else 0)
