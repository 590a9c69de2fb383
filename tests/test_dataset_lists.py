"""One list grammar read the same way by every tool, and the frame count cache (<list>.frames)."""
import csv
import json
import logging
import os

import pytest

import main as train_main
import predict as predict_entry
import test as test_entry
from ops import dataset as D
from ops import video_readers as V
from ops.dataset_config import get_dataset_config, read_categories
from ops.gradcam import find_video
from ops.recognizer import collect_inputs
from ops.scores import load_scores
from tests.test_video_readers import write_mp4

CLASSES = ['jumping', 'running', 'waving']
FRAMES = {'jumping/a.mp4': 10, 'jumping/b c.mp4': 11, 'running/d.mp4': 12, 'waving/e.mp4': 13,
          'jumping/f g.mp4': 14, 'waving/h.mp4': 15}
# every form of the grammar: '<path> <label>', a '-' count, a known count, a path with a space
TRAIN = ['jumping/a.mp4 0', 'jumping/b c.mp4 - 0', 'running/d.mp4 1', 'waving/e.mp4 13 2']
VAL = ['jumping/f g.mp4 0', 'waving/h.mp4 2']
COUNTED = ['jumping/a.mp4', 'jumping/b c.mp4', 'running/d.mp4', 'jumping/f g.mp4', 'waving/h.mp4']


def write_lines(path, lines):
    path.write_text(''.join(line + '\n' for line in lines))


@pytest.fixture(scope='module')
def video_dataset(tmp_path_factory):
    """A .json dataset of mp4 files in class folders, its lists without most frame counts."""
    root = tmp_path_factory.mktemp('listdata')
    for path, count in FRAMES.items():
        os.makedirs(root / 'videos' / os.path.dirname(path), exist_ok=True)
        write_mp4(root / 'videos' / path, count, 64, 48)
    write_lines(root / 'category.txt', CLASSES)
    write_lines(root / 'train.txt', TRAIN)
    write_lines(root / 'val.txt', VAL)
    (root / 'data.json').write_text(json.dumps(
        {'categories': 'category.txt', 'train_list': 'train.txt', 'val_list': 'val.txt',
         'root_path': 'videos', 'image_tmpl': '{:05d}.jpg', 'flip': False}))
    return root


def logging_counts(log):
    """OpenCVReader.count that also appends 'pid path' to `log` (from any process)."""
    original = V.OpenCVReader.count

    def counting(reader):
        with open(log, 'a') as f:
            f.write(f'{os.getpid()} {reader.path}\n')
        return original(reader)

    return counting


@pytest.fixture
def count_log(tmp_path, monkeypatch):
    """A file with one 'pid path' line per frame count decoded."""
    log = tmp_path / 'counts.log'
    log.write_text('')
    monkeypatch.setattr(V.OpenCVReader, 'count', logging_counts(log))
    return log


def counted(log, root):
    """[(pid, path relative to the video root)] of the counts logged."""
    lines = [line.split(' ', 1) for line in log.read_text().splitlines()]
    return [(int(pid), os.path.relpath(path, root / 'videos')) for pid, path in lines]


def cached_counts(list_file):
    return {v: entry[0] for v, entry in D.FrameCountCache(str(list_file)).entries.items()}


def run_test_py(root, weights, out, *extra):
    test_entry.main(['--dataset', str(root / 'data.json'), '--weights', weights, '-j', '1',
                     '--video_backend', 'opencv', '--save_scores', str(out), *extra])
    (name,) = [f for f in os.listdir(out) if f.endswith('.npz')]
    return load_scores(os.path.join(out, name))


def test_list_grammar_with_spaces_unknown_counts_and_labels():
    assert D.parse_list_line('v.mp4 2\n') == ('v.mp4', None, 2)
    assert D.parse_list_line('v.mp4 -1') == ('v.mp4', None, -1)
    assert D.parse_list_line('frames/v 40 3') == ('frames/v', 40, 3)
    assert D.parse_list_line('my clip.mp4 - 1') == ('my clip.mp4', None, 1)
    assert D.parse_list_line('my  clip 7 1') == ('my  clip', 7, 1)
    assert D.parse_list_line('clip 12 - 3') == ('clip 12', None, 3)  # a path ending in a number
    for bad in ('v.mp4', 'v.mp4 -', 'v.mp4 3 x', 'v.mp4 0 1', 'video 12.5 3', 'v -4 1'):
        with pytest.raises(ValueError):
            D.parse_list_line(bad)
    assert D.parse_list_line('clip 12.5 - 3') == ('clip 12.5', None, 3)  # with the count field
    records = [D.VideoRecord('v', None, -1, 4)]
    D.check_labels(records, 'l.txt', 3, allow_unlabelled=True)
    with pytest.raises(D.DataError, match=r"l.txt:4: label -1 of 'v' is not in \[0, 3\)"):
        D.check_labels(records, 'l.txt', 3)


def test_a_byte_order_mark_and_a_non_integer_count(tmp_path):
    lists = tmp_path / 'list.txt'
    lists.write_bytes('\ufeffa.mp4 10 0\nb.mp4 - 1\n'.encode('utf-8'))  # a Windows editor's list
    assert [(r.path, r.num_frames, r.label) for r in D.parse_list_file(str(lists))] == [
        ('a.mp4', 10, 0), ('b.mp4', None, 1)]
    lists.write_text('a.mp4 10 0\nvideo 12.5 3\n')
    with pytest.raises(D.DataError, match=r"list.txt:2: cannot parse 'video 12.5 3' \(num_frames "
                                          r"'12.5' is not a whole number >= 1"):
        D.parse_list_file(str(lists))


def test_a_category_file_with_a_byte_order_mark(tmp_path):
    categories = tmp_path / 'category.txt'
    categories.write_bytes('\ufeffPushing something from left to right\nOther\n'.encode('utf-8'))
    assert read_categories(str(categories)) == ['Pushing something from left to right', 'Other']


@pytest.fixture(scope='module')
def trained(video_dataset, tmp_path_factory):
    """main.py with one loader worker on the video dataset, the counts it made, its checkpoint."""
    root, out = video_dataset, str(tmp_path_factory.mktemp('listrun'))
    log = root / 'counts.log'
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(V.OpenCVReader, 'count', logging_counts(log))
        train_main.main(['--dataset', str(root / 'data.json'), '--arch', 'resnet10',
                         '--num_segments', '4', '--input_size', '32', '--pretrain', 'none',
                         '-b', '2', '-j', '1', '--video_backend', 'opencv', '--lr', '0.01',
                         '--lr_type', 'step_lr', '--lr_steps', '1', '--epochs', '2',
                         '--root_log', out, '--root_checkpoint', out, '--store_name', 'run',
                         '-p', '1', '--seed', '3'])
    (weights,) = [os.path.join(d, f) for d, _, files in os.walk(out) for f in files
                  if f == 'ckpt.pth.tar']
    return weights, counted(log, root)


@pytest.mark.slow
def test_counts_are_made_once_up_front_and_cached(video_dataset, trained, count_log, tmp_path):
    root = video_dataset
    _, training_counts = trained
    # main.py -j 1, 2 epochs: each unknown count decoded once, in the main process
    assert sorted(path for _, path in training_counts) == sorted(COUNTED)
    assert {pid for pid, _ in training_counts} == {os.getpid()}
    assert cached_counts(root / 'train.txt') == {p: FRAMES[p] for p in COUNTED[:3]}
    assert cached_counts(root / 'val.txt') == {p: FRAMES[p] for p in COUNTED[3:]}
    # a later test.py run takes every count from the cache
    weights, _ = trained
    scores = run_test_py(root, weights, tmp_path / 's1')
    assert counted(count_log, root) == []
    assert list(scores['labels']) == [0, 2]
    # a video that changes is counted again, and only that one
    write_mp4(root / 'videos' / 'waving' / 'h.mp4', 9, 64, 48)
    try:
        run_test_py(root, weights, tmp_path / 's2')
        assert counted(count_log, root) == [(os.getpid(), 'waving/h.mp4')]
        assert cached_counts(root / 'val.txt')['waving/h.mp4'] == 9
    finally:
        write_mp4(root / 'videos' / 'waving' / 'h.mp4', FRAMES['waving/h.mp4'], 64, 48)


def test_corrupt_read_only_and_other_rank_caches(video_dataset, count_log, tmp_path, caplog,
                                                monkeypatch):
    root = video_dataset
    write_lines(tmp_path / 'list.txt', ['jumping/a.mp4 - 0', 'running/d.mp4 1'])
    list_file, cache_file = str(tmp_path / 'list.txt'), str(tmp_path / 'list.txt.frames')

    def fill():
        records = D.parse_list_file(list_file)
        D.fill_frame_counts(records, str(root / 'videos'), list_file, video_backend='opencv')
        assert [r.num_frames for r in records] == [10, 12]

    (tmp_path / 'list.txt.frames').write_text('garbage\n')
    with caplog.at_level(logging.WARNING, logger='masnet.data'):
        fill()
    assert 'list.txt.frames' in caplog.text and 'unreadable' in caplog.text
    assert cached_counts(list_file) == {'jumping/a.mp4': 10, 'running/d.mp4': 12}
    assert open(cache_file).readline().strip() == D.FrameCountCache.HEADER
    assert len(counted(count_log, root)) == 2
    fill()  # the rewritten cache is used
    assert len(counted(count_log, root)) == 2

    # under torchrun only rank 0 writes the cache
    os.remove(cache_file)
    monkeypatch.setenv('RANK', '1')
    fill()
    assert not os.path.exists(cache_file) and len(counted(count_log, root)) == 4
    monkeypatch.setenv('RANK', '0')

    # a list in a read-only folder keeps its cache in the user cache folder
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache'))
    write_atomically = D.atomic_write

    def refuse_beside_list(path, *args):
        if os.path.dirname(os.path.abspath(path)) == str(tmp_path):
            raise PermissionError(13, 'Permission denied', path)
        return write_atomically(path, *args)

    monkeypatch.setattr(D, 'atomic_write', refuse_beside_list)
    fill()
    assert not os.path.exists(cache_file) and len(counted(count_log, root)) == 6
    (fallback,) = os.listdir(tmp_path / 'cache' / 'masnet' / 'frame_counts')
    assert fallback.endswith('_list.txt.frames')
    fill()  # read back from there
    assert len(counted(count_log, root)) == 6

    # and in memory, with one warning, when that cannot be written either
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache2'))
    monkeypatch.setattr(D, 'atomic_write', lambda path, *a: refuse_beside_list(str(tmp_path), *a))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger='masnet.data'):
        fill()
    assert caplog.text.count('kept in memory only') == 1


@pytest.mark.slow
def test_every_tool_reads_the_same_labels(video_dataset, trained, tmp_path, capsys):
    root = video_dataset
    weights, _ = trained
    cfg = get_dataset_config(str(root / 'data.json'))
    # main.py's dataset: '<video> <label>' lines carry their label, not a frame count
    records = D.load_checked_list(cfg.val_list, cfg.root_path, cfg.num_class, cfg.image_tmpl)
    data = D.TSNDataSet(cfg.root_path, None, 4, video_list=records, random_shift=False)
    assert [data[i][1] for i in range(2)] == [0, 2]
    assert [r.num_frames for r in records] == [14, 15]
    # CAM.py: a video id of the lists
    assert find_video('waving/h.mp4', cfg)[1].label == 2
    # predict.py on the same list: its labels (and class names) in the JSON and CSV records
    predict_args = ['--dataset', str(root / 'data.json'), '--weights', weights, '-j', '0',
                    '--topk', '2']
    _, listed = collect_inputs(cfg.val_list, cfg.root_path, CLASSES)
    assert [(r.path, r.num_frames, r.label) for r in listed] == [('jumping/f g.mp4', 14, 0),
                                                               ('waving/h.mp4', 15, 2)]
    predictions = predict_entry.main([cfg.val_list, '--root', cfg.root_path, *predict_args,
                                      '--json', str(tmp_path / 'p.json'),
                                      '--csv', str(tmp_path / 'p.csv')])
    assert [p.label for p in predictions] == [0, 2]
    saved = json.load(open(tmp_path / 'p.json'))
    assert [(s['video'], s['label'], s['label_class']) for s in saved] == [
        ('jumping/f g.mp4', 0, 'jumping'), ('waving/h.mp4', 2, 'waving')]
    rows = list(csv.DictReader(open(tmp_path / 'p.csv')))
    assert [(r['label'], r['label_class']) for r in rows] == [('0', 'jumping'), ('2', 'waving')]
    # gen_label's unlabelled '<video> -1' lines
    write_lines(tmp_path / 'test.txt', ['jumping/f g.mp4 -1', 'waving/h.mp4 - -1'])
    unlabelled = predict_entry.main([str(tmp_path / 'test.txt'), '--root', cfg.root_path,
                                     *predict_args, '--json', str(tmp_path / 'u.json')])
    assert [p.label for p in unlabelled] == [-1, -1]
    assert all('label' not in s for s in json.load(open(tmp_path / 'u.json')))
    # a label the model does not have is an error naming the line
    write_lines(tmp_path / 'bad.txt', ['jumping/f g.mp4 0', 'waving/h.mp4 3'])
    with pytest.raises(SystemExit):
        predict_entry.main([str(tmp_path / 'bad.txt'), '--root', cfg.root_path, *predict_args])
    assert "bad.txt:2: label 3 of 'waving/h.mp4' is not in [0, 3)" in capsys.readouterr().err


@pytest.mark.slow
def test_predict_finds_videos_in_class_folders(video_dataset, trained, tmp_path):
    root = video_dataset
    weights, _ = trained
    predictions = predict_entry.main([str(root / 'videos'), '--dataset', str(root / 'data.json'),
                                      '--weights', weights, '-j', '0'])
    assert {p.video: (p.label, p.label_name) for p in predictions} == {
        path: (CLASSES.index(path.split('/')[0]), path.split('/')[0]) for path in FRAMES}
    # class folders that are not all classes of the model: no label at all
    other = tmp_path / 'other'
    os.makedirs(other / 'jumping')
    os.makedirs(other / 'swimming')
    write_mp4(other / 'jumping' / 'x.mp4', 8, 64, 48)
    write_mp4(other / 'swimming' / 'y.mp4', 8, 64, 48)
    write_mp4(other / 'z.mp4', 8, 64, 48)
    folder, records = collect_inputs(str(other), categories=CLASSES)
    assert folder == str(other)
    assert [(r.path, r.label) for r in records] == [('z.mp4', -1), ('jumping/x.mp4', -1),
                                                    ('swimming/y.mp4', -1)]
    os.rename(other / 'swimming', other / 'waving')
    _, records = collect_inputs(str(other), categories=CLASSES)
    assert [(r.path, r.label) for r in records] == [('z.mp4', -1), ('jumping/x.mp4', 0),
                                                    ('waving/y.mp4', 2)]
