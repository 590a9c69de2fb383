"""Where each dataset lives below ``--dataset_path`` and how its frames are named.

The folder conventions are the MAS-Net/TSM release's, so existing data trees work as they
are. A dataset of your own needs no code change: pass a JSON file as ``--dataset``::

    {"categories": "category.txt", "train_list": "train.txt", "val_list": "val.txt",
     "root_path": "frames", "image_tmpl": "{:05d}.jpg", "flip": true}

Relative paths in the JSON file are taken from the JSON file's folder.
"""
import json
import logging
import os
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from ops.errors import UserError


class DatasetError(UserError):
    """A dataset that is unknown or whose files are missing / malformed."""


@dataclass
class DatasetConfig:
    name: str
    num_class: int
    categories: List[str]
    root_path: str
    train_list: str
    val_list: str
    image_tmpl: str
    flip: bool = True
    mirror_map: Optional[Dict[int, int]] = field(default=None)


# name -> (category file, train list, val list, frame root, frame template, number of classes);
# paths relative to --dataset_path; a category file of None means classes are numbered.
_LAYOUTS = {
    'somethingv1': ('somethingv1/category.txt', 'somethingv1/train.txt', 'somethingv1/valid.txt',
                    'somethingv1/20bn-something-something-v1', '{:05d}.jpg', 174),
    # the release's subset for quick runs: the V1 data with the training list trainQ.txt
    'somethingv1_mini': ('somethingv1/category.txt', 'somethingv1/trainQ.txt',
                         'somethingv1/valid.txt', 'somethingv1/20bn-something-something-v1',
                         '{:05d}.jpg', 174),
    'somethingv2': ('somethingv2/category.txt', 'somethingv2/train.txt', 'somethingv2/valid.txt',
                    'somethingv2/20bn-something-something-v2-frames', '{:06d}.jpg', 174),
    'kinetics': ('K400/category.txt', 'K400/train_videofolder.txt', 'K400/val_videofolder.txt',
                 'K400/img', 'img_{:05d}.jpg', 400),
    'ucf101': ('UCF101/category.txt', 'UCF101/file_list/ucf101_rgb_train_split_1.txt',
               'UCF101/file_list/ucf101_rgb_val_split_1.txt', 'UCF101/jpg', 'img_{:05d}.jpg', 101),
    'hmdb51': ('HMDB51/category.txt', 'HMDB51/splits/hmdb51_rgb_train_split_1.txt',
               'HMDB51/splits/hmdb51_rgb_val_split_1.txt', 'HMDB51/images', 'img_{:05d}.jpg', 51),
    'jester': ('jester/category.txt', 'jester/train_videofolder.txt', 'jester/val_videofolder.txt',
               'jester/20bn-jester-v1', '{:05d}.jpg', 27),
    'diving48': ('diving48/category.txt', 'diving48/train_videofolder.txt',
                 'diving48/val_videofolder.txt', 'diving48/frames', '{:05d}.jpg', 48),
}
DATASETS = tuple(_LAYOUTS) + ('synthetic',)
# datasets whose classes may be numbered when their category file is absent
_OPTIONAL_CATEGORIES = ('kinetics', 'ucf101', 'hmdb51', 'diving48')

_MIRROR_WORDS = {'left': 'right', 'right': 'left', 'clockwise': 'counterclockwise',
                 'counterclockwise': 'clockwise', 'anticlockwise': 'clockwise',
                 'counter-clockwise': 'clockwise'}
_MIRROR_RE = re.compile(r'\b(counter-clockwise|counterclockwise|anticlockwise|clockwise'
                        r'|left|right)\b', re.IGNORECASE)


def mirror_pairs(categories: List[str]) -> Dict[int, int]:
    """``{label: mirrored label}`` for classes whose name a horizontal flip turns into another's.

    The mirror of a name swaps left <-> right and clockwise <-> counterclockwise; a class is
    paired when that mirror is also a class. For Something-Something V1 this gives exactly
    86 <-> 87, 93 <-> 94 and 166 <-> 167.
    """
    index = {name.strip().lower(): i for i, name in enumerate(categories)}
    pairs = {}
    for i, name in enumerate(categories):
        mirrored = _MIRROR_RE.sub(lambda m: _MIRROR_WORDS[m.group(1).lower()], name.strip().lower())
        j = index.get(mirrored)
        if j is None and 'clockwise' in mirrored:
            j = index.get(mirrored.replace('counterclockwise', 'anticlockwise'))
        if j is not None and j != i:
            pairs[i] = j
    return pairs


def image_template(name: str) -> str:
    """The frame file name template of a known dataset layout."""
    if name == 'synthetic':
        return '{:05d}.jpg'
    if name not in _LAYOUTS:
        raise DatasetError(f"unknown dataset '{name}' (known: {', '.join(DATASETS)})")
    return _LAYOUTS[name][4]


def read_categories(path: str) -> List[str]:
    """Class names, one per line (blank lines skipped)."""
    if not os.path.isfile(path):
        raise DatasetError(f"category file '{path}' does not exist")
    with open(path, encoding='utf-8-sig') as f:  # a byte order mark is no part of a name
        return [line.strip() for line in f if line.strip()]


def _config_from_json(path):
    try:
        with open(path) as f:
            spec = json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise DatasetError(f"dataset file '{path}' cannot be read: {exc}") from None
    folder = os.path.dirname(os.path.abspath(path))
    required = ('train_list', 'val_list', 'root_path', 'image_tmpl')
    absent = [k for k in required if k not in spec]
    if absent:
        raise DatasetError(f"dataset file '{path}' lacks {', '.join(absent)}")
    if isinstance(spec.get('categories'), list):
        categories = spec['categories']
    elif 'categories' in spec:
        categories = read_categories(os.path.join(folder, spec['categories']))
    elif 'num_class' in spec:
        categories = [str(i) for i in range(int(spec['num_class']))]
    else:
        raise DatasetError(f"dataset file '{path}' needs 'categories' or 'num_class'")
    flip = bool(spec.get('flip', True))
    name = spec.get('name', os.path.splitext(os.path.basename(path))[0])
    return DatasetConfig(name, len(categories), categories, os.path.join(folder, spec['root_path']),
                         os.path.join(folder, spec['train_list']),
                         os.path.join(folder, spec['val_list']), spec['image_tmpl'], flip,
                         mirror_pairs(categories) if flip else None)


# --dataset_path when none is given: the release's default for the real datasets, then the
# path of the README's training command (where its test commands, which pass none, must find
# the same data), and a folder inside the repository for the generated dataset
DEFAULT_DATASET_PATHS = ('../', '../../datasets/')
DEFAULT_SYNTHETIC_PATH = 'data'


def default_dataset_path(name: str) -> str:
    """The --dataset_path used when none is given (see DEFAULT_DATASET_PATHS)."""
    if name == 'synthetic':
        return DEFAULT_SYNTHETIC_PATH
    layout = _LAYOUTS.get(name)
    if layout is not None:
        for path in DEFAULT_DATASET_PATHS:
            if os.path.isfile(os.path.join(path, layout[2])):
                return path
    return DEFAULT_DATASET_PATHS[0]


def get_dataset_config(name: str, dataset_path: Optional[str] = None) -> DatasetConfig:
    """The DatasetConfig of a known dataset `name` below `dataset_path`, or of a JSON file.

    'synthetic' generates the synthetic dataset into ``<dataset_path>/synthetic`` first if
    it is not there yet.
    """
    if dataset_path is None:
        dataset_path = default_dataset_path(name)
        if name != 'synthetic':
            logging.getLogger('masnet').info(f"--dataset_path not given: using '{dataset_path}'")
    if name.endswith('.json'):
        return _config_from_json(name)
    if name == 'synthetic':
        from ops.synthetic import SYNTHETIC_LAYOUT, ensure_synthetic
        ensure_synthetic(os.path.join(dataset_path, 'synthetic'))
        layout = (tuple(os.path.join('synthetic', p) for p in SYNTHETIC_LAYOUT)
                  + ('{:05d}.jpg', None))
    elif name in _LAYOUTS:
        layout = _LAYOUTS[name]
    else:
        raise DatasetError(f"unknown dataset '{name}' (known: {', '.join(DATASETS)}; "
                           f"or pass a .json dataset file)")
    category_file, train_list, val_list, root, tmpl, num_class = layout
    category_path = os.path.join(dataset_path, category_file)
    if name not in _OPTIONAL_CATEGORIES or os.path.isfile(category_path):
        categories = read_categories(category_path)
    else:
        categories = [str(i) for i in range(num_class)]
    if num_class is not None and len(categories) != num_class:
        raise DatasetError(f"category file '{category_path}' lists {len(categories)} classes, "
                           f"{name} has {num_class} (for a subset of the classes, pass a .json "
                           f"dataset file as --dataset; see docs/datasets.md)")
    return DatasetConfig(name, len(categories), categories, os.path.join(dataset_path, root),
                         os.path.join(dataset_path, train_list),
                         os.path.join(dataset_path, val_list),
                         tmpl, True, mirror_pairs(categories))
