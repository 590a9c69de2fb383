"""List files (``<folder> <num_frames> <label>``) and category.txt from official annotations.

    python tools/gen_label.py sthv1 ANNOTATIONS/ FRAMES/ OUT/
        something-something-v1-labels.csv, -train.csv, -validation.csv ('id;label' lines)
        -> OUT/category.txt, OUT/train.txt, OUT/valid.txt
        (+ -test.csv, ids only, if present -> OUT/test.txt, unlabelled: '<folder> <num_frames>')
    python tools/gen_label.py sthv2 ANNOTATIONS/ FRAMES/ OUT/
        labels.json ({name: index}), train.json, validation.json ([{id, template, ...}])
        -> OUT/category.txt, OUT/train.txt, OUT/valid.txt
        (+ test.json, [{id}], if present -> OUT/test.txt, unlabelled, for predict.py --submission)
    python tools/gen_label.py kinetics ANNOTATIONS/ FRAMES/ OUT/
        train.csv, validate.csv ('label,youtube_id,time_start,time_end,split')
        -> OUT/category.txt, OUT/train_videofolder.txt, OUT/val_videofolder.txt

Frame counts are read from FRAMES/<video folder>; videos without frames are skipped and counted.
"""
import argparse
import csv
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ops.dataset import count_frames  # noqa: E402


def write_split(out_file, samples, frame_root):
    """Write `samples` [(folder, label)] whose frame folder exists; returns (written, skipped).

    A label of None (test sets) writes an unlabelled '<folder> <num_frames>' line.
    """
    written = skipped = 0
    with open(out_file, 'w') as f:
        for folder, label in samples:
            path = os.path.join(frame_root, folder)
            frames = count_frames(path) if os.path.isdir(path) else 0
            if frames == 0:
                skipped += 1
                continue
            f.write(f'{folder} {frames}' + ('' if label is None else f' {label}') + '\n')
            written += 1
    return written, skipped


def write_categories(out_dir, categories):
    with open(os.path.join(out_dir, 'category.txt'), 'w') as f:
        f.write('\n'.join(categories) + '\n')


def sthv1(annotations):
    """Something-Something V1: categories sorted by name, as the release numbers them."""
    def read(name):
        with open(os.path.join(annotations, name)) as f:
            return [line.strip() for line in f if line.strip()]
    categories = sorted(read('something-something-v1-labels.csv'))
    index = {c: i for i, c in enumerate(categories)}
    splits = {}
    for split, name in (('train.txt', 'train'), ('valid.txt', 'validation')):
        rows = [line.split(';', 1) for line in read(f'something-something-v1-{name}.csv')]
        splits[split] = [(video_id, index[label]) for video_id, label in rows]
    if os.path.isfile(os.path.join(annotations, 'something-something-v1-test.csv')):
        splits['test.txt'] = [(video_id, None) for video_id in read('something-something-v1-test.csv')]
    return categories, splits


def sthv2(annotations):
    """Something-Something V2: label = template without brackets, indices from labels.json."""
    with open(os.path.join(annotations, 'labels.json')) as f:
        label_index = {name: int(i) for name, i in json.load(f).items()}
    categories = sorted(label_index, key=label_index.get)
    splits = {}
    for split, name in (('train.txt', 'train.json'), ('valid.txt', 'validation.json')):
        with open(os.path.join(annotations, name)) as f:
            items = json.load(f)
        splits[split] = [(item['id'], label_index[item['template'].replace('[', '').replace(']', '')])
                         for item in items]
    if os.path.isfile(os.path.join(annotations, 'test.json')):  # ids only
        with open(os.path.join(annotations, 'test.json')) as f:
            splits['test.txt'] = [(item['id'], None) for item in json.load(f)]
    return categories, splits


def kinetics(annotations):
    """Kinetics-400: folders '<youtube_id>_<start:06d>_<end:06d>', categories sorted by name."""
    rows = {}
    for split, name in (('train_videofolder.txt', 'train.csv'), ('val_videofolder.txt', 'validate.csv')):
        with open(os.path.join(annotations, name)) as f:
            rows[split] = list(csv.DictReader(f))
    categories = sorted({r['label'] for split_rows in rows.values() for r in split_rows})
    index = {c: i for i, c in enumerate(categories)}
    splits = {split: [(f"{r['youtube_id']}_{int(float(r['time_start'])):06d}_"
                       f"{int(float(r['time_end'])):06d}", index[r['label']]) for r in split_rows]
              for split, split_rows in rows.items()}
    return categories, splits


FORMATS = {'sthv1': sthv1, 'sthv2': sthv2, 'kinetics': kinetics}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('format', choices=FORMATS)
    parser.add_argument('annotations', help='folder of the official annotation files')
    parser.add_argument('frames', help='folder of the extracted frame folders')
    parser.add_argument('out', help='where category.txt and the lists are written')
    args = parser.parse_args(argv)
    try:
        categories, splits = FORMATS[args.format](args.annotations)
    except (OSError, KeyError, ValueError) as exc:
        sys.exit(f'gen_label.py: error: {args.format} annotations in {args.annotations}: '
                 f'{type(exc).__name__}: {exc}')
    os.makedirs(args.out, exist_ok=True)
    write_categories(args.out, categories)
    for split, samples in splits.items():
        written, skipped = write_split(os.path.join(args.out, split), samples, args.frames)
        print(f'{split}: {written} videos' + (f', {skipped} without frames skipped' if skipped else ''))
    print(f'category.txt: {len(categories)} classes')
    return categories, splits


if __name__ == '__main__':
    main()
