"""List files (``<folder> <num_frames> <label>``) and category.txt from official annotations.

    python tools/gen_label.py sthv1 ANNOTATIONS/ FRAMES/ OUT/
        something-something-v1-labels.csv, -train.csv, -validation.csv ('id;label' lines)
        -> OUT/category.txt, OUT/train.txt, OUT/valid.txt
        (+ -test.csv, ids only, if present -> OUT/test.txt, unlabelled: '<folder> <num_frames> -1')
    python tools/gen_label.py sthv2 ANNOTATIONS/ FRAMES/ OUT/
        labels.json ({name: index}), train.json, validation.json ([{id, template, ...}])
        -> OUT/category.txt, OUT/train.txt, OUT/valid.txt
        (+ test.json, [{id}], if present -> OUT/test.txt, unlabelled, for predict.py --submission)
    python tools/gen_label.py kinetics ANNOTATIONS/ FRAMES/ OUT/
        train.csv, validate.csv ('label,youtube_id,time_start,time_end,split')
        (and test.csv, no labels) -> OUT/category.txt, OUT/train_videofolder.txt,
        OUT/val_videofolder.txt (OUT/test_videofolder.txt, label -1)
    python tools/gen_label.py folders TREE/ OUT/ [--label_map MAP]
        class-per-folder trees as Kinetics / UCF101 ship: TREE/<split>/<class>/<video file or
        frame folder>; a split without class folders (TREE/test/<video>) is a test split
        without labels (label -1) -> OUT/category.txt, OUT/<split>.txt

Frame counts are read from FRAMES/<video folder>; videos without frames are skipped and counted.
Video files are listed as MMAction2 writes them, ``<path> <label>`` (frames counted on first
read). --label_map numbers the classes by a category file (one class a line, e.g. the
Kinetics-400 map tools/label_maps/label_map_k400.txt), so a subset keeps the full dataset's
indices; otherwise classes are the ones present, sorted, and a subset needs a .json dataset.
"""
import argparse
import csv
import json
import os
import sys

from ops.cli import HelpFormatter
from ops.dataset_config import read_categories
from ops.video_readers import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, count_frames

K400_LABEL_MAP = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'label_maps',
                              'label_map_k400.txt')
UNLABELLED = -1


def write_split(out_file, samples, frame_root):
    """Write `samples` [(folder, label)] whose frame folder exists; returns (written, skipped).

    A label of None (test sets) writes an unlabelled '<folder> <num_frames> -1' line.
    """
    written = skipped = 0
    with open(out_file, 'w') as f:
        for folder, label in samples:
            path = os.path.join(frame_root, folder)
            frames = count_frames(path) if os.path.isdir(path) else 0
            if frames == 0:
                skipped += 1
                continue
            f.write(f'{folder} {frames} {UNLABELLED if label is None else label}\n')
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
        test_ids = read('something-something-v1-test.csv')
        splits['test.txt'] = [(video_id, None) for video_id in test_ids]
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
        splits[split] = [
            (item['id'], label_index[item['template'].replace('[', '').replace(']', '')])
            for item in items]
    if os.path.isfile(os.path.join(annotations, 'test.json')):  # ids only
        with open(os.path.join(annotations, 'test.json')) as f:
            splits['test.txt'] = [(item['id'], None) for item in json.load(f)]
    return categories, splits


def kinetics(annotations):
    """Kinetics-400: folders '<youtube_id>_<start:06d>_<end:06d>', categories sorted by name;
    test.csv (no labels), when present, gives test_videofolder.txt with label -1."""
    rows = {}
    for split, name in (('train_videofolder.txt', 'train.csv'),
                        ('val_videofolder.txt', 'validate.csv'),
                        ('test_videofolder.txt', 'test.csv')):
        path = os.path.join(annotations, name)
        if name != 'test.csv' or os.path.isfile(path):
            with open(path) as f:
                rows[split] = list(csv.DictReader(f))
    categories = sorted({r['label'] for split_rows in rows.values() for r in split_rows
                         if r.get('label')})
    index = {c: i for i, c in enumerate(categories)}
    splits = {split: [(f"{r['youtube_id']}_{int(float(r['time_start'])):06d}_"
                       f"{int(float(r['time_end'])):06d}",
                       index[r['label']] if r.get('label') else UNLABELLED) for r in split_rows]
              for split, split_rows in rows.items()}
    return categories, splits


def _is_frame_folder(path):
    return any(f.lower().endswith(IMAGE_EXTENSIONS) for f in os.listdir(path))


def _items(folder):
    """Video files and frame folders directly in `folder` (names, sorted)."""
    def is_item(name):
        path = os.path.join(folder, name)
        return name.lower().endswith(VIDEO_EXTENSIONS) or (os.path.isdir(path)
                                                           and _is_frame_folder(path))
    return sorted(n for n in os.listdir(folder) if is_item(n))


def tree_splits(root):
    """``{split: {class name or None: [item paths relative to root]}}`` of a class-per-folder
    tree; None holds the items of a split without class folders (unlabelled)."""
    splits = {}
    for split in sorted(os.listdir(root)):
        split_dir = os.path.join(root, split)
        if not os.path.isdir(split_dir) or _is_frame_folder(split_dir):
            continue
        classes = {}
        direct = _items(split_dir)
        if direct:
            classes[None] = [os.path.join(split, n) for n in direct]
        for name in sorted(os.listdir(split_dir)):
            class_dir = os.path.join(split_dir, name)
            if os.path.isdir(class_dir) and not _is_frame_folder(class_dir):
                classes[name] = [os.path.join(split, name, n) for n in _items(class_dir)]
        if classes:
            splits[split] = classes
    return splits


def folders(root, label_map=None):
    """Categories and list lines of a class-per-folder tree (see the module doc)."""
    splits = tree_splits(root)
    present = sorted({c for classes in splits.values() for c in classes if c is not None})
    categories = read_categories(label_map) if label_map else present
    index = {c: i for i, c in enumerate(categories)}
    unknown = [c for c in present if c not in index]
    if unknown:
        raise KeyError(f"classes {unknown[:3]} of '{root}' are not in the label map '{label_map}'")
    lines = {}
    for split, classes in splits.items():
        lines[f'{split}.txt'] = []
        for name, items in classes.items():
            label = UNLABELLED if name is None else index[name]
            for item in items:
                path = os.path.join(root, item)
                count = '' if os.path.isfile(path) else f' {count_frames(path)}'
                lines[f'{split}.txt'].append(f'{item}{count} {label}')
    return categories, lines


FORMATS = {'sthv1': sthv1, 'sthv2': sthv2, 'kinetics': kinetics}


def write_tree_lists(root, out, label_map=None):
    """gen_label.py folders: category.txt and one list per split of the tree `root`."""
    categories, lines = folders(root, label_map)
    os.makedirs(out, exist_ok=True)
    write_categories(out, categories)
    for split, split_lines in lines.items():
        with open(os.path.join(out, split), 'w') as f:
            f.write(''.join(line + '\n' for line in split_lines))
        unlabelled = sum(line.endswith(f' {UNLABELLED}') for line in split_lines)
        print(f'{split}: {len(split_lines)} videos' + (f' ({unlabelled} without label)'
                                                        if unlabelled else ''))
    print(f'category.txt: {len(categories)} classes')
    return categories, lines


def main(argv=None):
    parser = argparse.ArgumentParser(formatter_class=HelpFormatter,
                                     description=__doc__.splitlines()[0])
    parser.add_argument('format', choices=tuple(FORMATS) + ('folders',))
    parser.add_argument('annotations', help='folder of the official annotation files (folders: '
                                            'the class-per-folder tree)')
    parser.add_argument('frames', help='folder of the extracted frame folders (folders: OUT)')
    parser.add_argument('out', nargs='?', help='where category.txt and the lists are written')
    parser.add_argument('--label_map', default=None,
                        help=f'number the classes by this category file (kinetics, folders), '
                             f'e.g. {os.path.relpath(K400_LABEL_MAP)}')
    args = parser.parse_args(argv)
    try:
        if args.format == 'folders':
            return write_tree_lists(args.annotations, args.out or args.frames, args.label_map)
        categories, splits = FORMATS[args.format](args.annotations)
        if args.label_map:
            categories, splits = renumber(categories, splits, read_categories(args.label_map),
                                          args.label_map)
    except (OSError, KeyError, ValueError) as exc:
        sys.exit(f'gen_label.py: error: {args.format} annotations in {args.annotations}: '
                 f'{type(exc).__name__}: {exc}')
    if args.out is None:
        parser.error('the out folder is required')
    os.makedirs(args.out, exist_ok=True)
    write_categories(args.out, categories)
    for split, samples in splits.items():
        written, skipped = write_split(os.path.join(args.out, split), samples, args.frames)
        skipped_note = f', {skipped} without frames skipped' if skipped else ''
        print(f'{split}: {written} videos{skipped_note}')
    print(f'category.txt: {len(categories)} classes')
    if args.format == 'kinetics' and len(categories) != 400:
        print(f'note: --dataset kinetics needs the 400 classes: pass --label_map '
              f'{os.path.relpath(K400_LABEL_MAP)} to keep their numbering, or use these '
              f'{len(categories)} classes through a .json dataset file', file=sys.stderr)
    return categories, splits


def renumber(categories, splits, label_map, map_file):
    """Labels of `splits` by the class order of `label_map` instead of `categories`."""
    index = {c: i for i, c in enumerate(label_map)}
    unknown = [c for c in categories if c not in index]
    if unknown:
        raise KeyError(f"classes {unknown[:3]} are not in the label map '{map_file}'")
    new = {old: index[c] for old, c in enumerate(categories)}
    new[UNLABELLED] = UNLABELLED
    return label_map, {split: [(folder, new[label]) for folder, label in samples]
                       for split, samples in splits.items()}


if __name__ == '__main__':
    main()
