"""List the unreadable or truncated videos of a list file before training, in parallel and
resumably.

    python tools/check_videos.py LIST ROOT --num_workers 8

Every video of LIST (paths relative to ROOT) is decoded in full, keeping no frame: a video file
is 'unreadable' when it does not open or no frame decodes, 'truncated' when fewer frames decode
than its container claims, 'short' when fewer than the list says; a frame folder is 'unreadable'
when missing or empty and 'short' when it holds fewer frames than listed. One line per video,
``<status> <path> <decoded> <claimed> <listed>``, is appended to the report (default
``LIST.check``) as soon as it is known, so a stopped run resumes where it was; the bad videos
are printed at the end with their count, and the exit status is 1 when there is one;
--write-clean LIST writes the lines of the list file without the bad videos.
"""
import argparse
import os
import sys
from multiprocessing import Pool

import cv2
from tqdm import tqdm

from ops.cli import HelpFormatter
from ops.dataset import DataError, parse_list_file
from ops.files import atomic_write
from ops.video_readers import count_frames

OK = 'ok'


def decode_count(path):
    """(frames that decode, frames the container claims (0: unknown)) of a video file;
    (0, 0) when it does not open."""
    capture = cv2.VideoCapture(path)
    if not capture.isOpened():
        return 0, 0
    claimed = max(0, int(capture.get(cv2.CAP_PROP_FRAME_COUNT)))
    decoded = 0
    try:
        while capture.grab():
            decoded += 1
    finally:
        capture.release()
    return decoded, claimed


def check_video(job):
    """(status, path, decoded, claimed, listed) of one list entry."""
    root, path, listed, is_video_file = job
    full = os.path.join(root, path)
    if is_video_file:
        decoded, claimed = decode_count(full) if os.path.isfile(full) else (0, 0)
    else:
        decoded = claimed = count_frames(full) if os.path.isdir(full) else 0
    listed = listed or 0
    if decoded == 0:
        status = 'unreadable'
    elif decoded < claimed:
        status = 'truncated'
    elif decoded < listed:
        status = 'short'
    else:
        status = OK
    return status, path, decoded, claimed, listed


def read_report(report):
    """{path: report line fields} of the videos an earlier run checked."""
    done = {}
    if os.path.isfile(report):
        with open(report) as f:
            for line in f:
                fields = line.split()
                if len(fields) == 5 and line.endswith('\n'):
                    done[fields[1]] = fields
    return done


def check_list(list_file, root, report, num_workers=4):
    """Check every video of `list_file` not yet in `report`; returns {path: status}."""
    records = parse_list_file(list_file)
    done = read_report(report)
    statuses = {path: fields[0] for path, fields in done.items()}
    jobs = [(root, r.path, r.num_frames, r.is_video_file) for r in records if r.path not in done]
    if os.path.isfile(report):
        with open(report, 'rb+') as f:  # drop a line a stopped run left half-written
            data = f.read()
            f.truncate(data.rfind(b'\n') + 1)
    with open(report, 'a') as out, Pool(max(1, num_workers)) as pool:
        for status, path, decoded, claimed, listed in tqdm(
                pool.imap_unordered(check_video, jobs), total=len(jobs), desc='check',
                unit='video'):
            out.write(f'{status} {path} {decoded} {claimed} {listed}\n')
            out.flush()
            statuses[path] = status
    return {r.path: statuses[r.path] for r in records}


def write_clean_list(path, list_file, statuses):
    """Write the lines of `list_file` whose video is OK in `statuses`, atomically."""
    bad_lines = {r.line_no for r in parse_list_file(list_file) if statuses[r.path] != OK}
    with open(list_file, 'rb') as f:
        lines = [line for line_no, line in enumerate(f, start=1)
                 if line.strip() and line_no not in bad_lines]
    with atomic_write(path) as out:
        out.write(b''.join(line if line.endswith(b'\n') else line + b'\n' for line in lines))


def main(argv=None):
    parser = argparse.ArgumentParser(formatter_class=HelpFormatter,
                                     description=__doc__.splitlines()[0])
    parser.add_argument('list_file')
    parser.add_argument('root', help='folder the paths of the list are relative to')
    parser.add_argument('--report', default=None, help='default: LIST.check')
    parser.add_argument('--num_workers', '-j', '--workers', dest='num_workers', type=int,
                        default=os.cpu_count(), help='processes checking videos')
    parser.add_argument('--write-clean', dest='write_clean', metavar='LIST', default=None,
                        help='write the lines of list_file without the bad videos to LIST')
    args = parser.parse_args(argv)
    try:
        statuses = check_list(args.list_file, args.root, args.report or args.list_file + '.check',
                              args.num_workers)
    except DataError as exc:
        sys.exit(f'check_videos.py: error: {exc}')
    bad = {p: s for p, s in statuses.items() if s != OK}
    for path, status in bad.items():
        print(f'{status} {path}')
    print(f'{len(statuses)} videos checked: {len(bad)} bad')
    if args.write_clean:
        write_clean_list(args.write_clean, args.list_file, statuses)
        print(f'{len(statuses) - len(bad)} good videos listed in {args.write_clean}')
    return statuses


if __name__ == '__main__':
    sys.exit(1 if any(s != OK for s in main().values()) else 0)
