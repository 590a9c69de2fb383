"""Write frame folders (one after the other) into one video file, e.g. to try predict.py.

    python tools/frames_to_video.py data/synthetic/frames/valid_0_0000 --output clip.mp4
    python tools/frames_to_video.py FOLDER1 FOLDER2 FOLDER3 --output long.mp4 --fps 12

Frames are read in name order and resized to the first frame's size.
"""
import argparse
import os
import sys

import cv2

from ops.cli import HelpFormatter
from ops.run_predict import write_video
from ops.video_readers import IMAGE_EXTENSIONS


def read_frames(folder):
    """BGR frames of a folder's image files, in name order."""
    if not os.path.isdir(folder):
        sys.exit(f"frames_to_video.py: error: '{folder}' is not a folder")
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTENSIONS))
    frames = [cv2.imread(os.path.join(folder, n)) for n in names]
    if not frames or any(f is None for f in frames):
        sys.exit(f"frames_to_video.py: error: '{folder}' holds no (readable) image")
    return frames


def main(argv=None):
    parser = argparse.ArgumentParser(formatter_class=HelpFormatter,
                                     description=__doc__.splitlines()[0])
    parser.add_argument('folders', nargs='+', help='frame folders, written in this order')
    parser.add_argument('--output', required=True, help='video file (.mp4 or .avi)')
    parser.add_argument('--fps', default=12.0, type=float)
    args = parser.parse_args(argv)
    frames, starts = [], []
    for folder in args.folders:
        starts.append(len(frames) + 1)
        frames += read_frames(folder)
    height, width = frames[0].shape[:2]
    frames = [f if f.shape[:2] == (height, width) else cv2.resize(f, (width, height))
              for f in frames]
    write_video(args.output, frames, args.fps)
    print(f'{args.output}: {len(frames)} frames at {args.fps:g} fps; folders start at frames '
          + ', '.join(map(str, starts)))
    return starts


if __name__ == '__main__':
    main()
