"""The workflow of docs/datasets.md, docs/testing.md and docs/prediction.md end to end, on
generated mp4 files in class folders.

gen_label -> main.py -> test.py (labelled and unlabelled lists) -> average_scores.py ->
predict.py (on the lists gen_label wrote, class names from the checkpoint alone) ->
tools/export.py -> onnxruntime on the same clip. Each handoff is checked on what the next tool
reads: labels, class names, video ids, predictions.
"""
import json
import os

import cv2
import numpy as np
import pytest

import average_scores
import main as train_main
import predict as predict_main
import test as test_main
from ops.checkpoint import read_checkpoint
from ops.dataset import parse_list_file
from ops.export import preprocess_for_export
from ops.scores import load_scores
from tools import gen_label
from tools.export import main as export_main

CLASSES = ['drifting_down', 'sliding_left', 'sliding_right']  # sorted: gen_label's order
T, SIZE = 4, 64


def write_clip(path, cls, seed, count=12, w=80, h=60):
    """An mp4 of a bright square moving as its class says (left, right or down)."""
    rng = np.random.default_rng(seed)
    x, y = int(rng.integers(20, 40)), int(rng.integers(15, 30))
    dx, dy = {'sliding_left': (-3, 0), 'sliding_right': (3, 0), 'drifting_down': (0, 2)}[cls]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'mp4v'), 25, (w, h))
    for i in range(count):
        frame = np.full((h, w, 3), 40, np.uint8)
        cx, cy = x + dx * i, y + dy * i
        frame[cy:cy + 10, cx:cx + 10] = (250, 220, 30)
        writer.write(frame)
    writer.release()


@pytest.fixture(scope='module')
def workflow(tmp_path_factory):
    """A class-folder tree of mp4 files, gen_label's lists and a .json dataset over them."""
    root = tmp_path_factory.mktemp('workflow')
    tree = root / 'videos'
    seed = 0
    for split, per_class in (('train', 3), ('val', 2)):
        for cls in CLASSES:
            os.makedirs(tree / split / cls)
            for k in range(per_class):
                seed += 1
                write_clip(tree / split / cls / f'{cls}_{k}.mp4', cls, seed)
    os.makedirs(tree / 'test')
    for k, cls in enumerate(CLASSES):  # the test split has no class folders: no labels
        write_clip(tree / 'test' / f'clip_{k}.mp4', cls, 100 + k)
    lists = root / 'lists'
    categories, _ = gen_label.main(['folders', str(tree), str(lists)])
    (lists / 'videos.json').write_text(json.dumps({
        'categories': 'category.txt', 'train_list': 'train.txt', 'val_list': 'val.txt',
        'root_path': str(tree), 'image_tmpl': '{:05d}.jpg'}))
    return root, tree, lists, categories


@pytest.mark.slow
def test_the_readme_workflow_hands_over_labels_and_names(workflow, tmp_path):
    root, tree, lists, categories = workflow
    # gen_label: classes from the folders, '<video> <label>' lines, '<video> -1' for the test split
    assert categories == CLASSES
    val = parse_list_file(str(lists / 'val.txt'))
    assert [CLASSES[r.label] for r in val] == [os.path.basename(os.path.dirname(r.path))
                                               for r in val]
    assert {r.label for r in parse_list_file(str(lists / 'test.txt'))} == {-1}

    # main.py on the .json dataset: the checkpoint records the names of category.txt
    dataset = str(lists / 'videos.json')
    exp = tmp_path / 'exp'
    train_main.main(['--dataset', dataset, '--arch', 'resnet10', '--num_segments', str(T),
                     '--input_size', str(SIZE), '--pretrain', 'none', '--batch-size', '3',
                     '--lr', '0.01', '--lr_type', 'cos_lr', '--epochs', '1', '-j', '0',
                     '--root_log', str(exp), '--root_checkpoint', str(exp),
                     '--store_name', 'wf'])
    (best,) = [os.path.join(d, f) for d, _, files in os.walk(exp) for f in files
               if f == 'ckpt.best.pth.tar']
    checkpoint = read_checkpoint(best)
    assert checkpoint['categories'] == CLASSES and checkpoint['num_segments'] == T
    # the frame counts of '<video> <label>' lines were cached beside the list
    assert os.path.isfile(str(lists / 'train.txt') + '.frames')

    # test.py, labelled: the score file holds the list's labels and video ids
    scores = tmp_path / 'score'
    common = ['--dataset', dataset, '--weights', best, '-j', '0', '--save_scores', str(scores)]
    top1, _, _ = test_main.main(common + ['--test_crops', '1'])
    test_main.main(common + ['--test_crops', '3', '--full_res', '--twice_sample'])
    files = sorted(str(scores / f) for f in os.listdir(scores) if f.endswith('.npz'))
    assert len(files) == 2
    one_view = load_scores(files[0] if '1crop' in files[0] else files[1])
    assert list(one_view['labels']) == [r.label for r in val]
    assert list(one_view['video_ids']) == [r.path for r in val]
    expected_top1 = 100.0 * np.mean(one_view['scores'].argmax(1) == one_view['labels'])
    assert top1 == pytest.approx(expected_top1)

    # average_scores.py with no files: the folder's one group, the sum of the two files' scores
    # (the release's ensemble)
    combined, result = average_scores.main(['--score_dir', str(scores)])
    total = load_scores(files[0])['scores'] + load_scores(files[1])['scores']
    np.testing.assert_allclose(np.asarray(combined), total, rtol=1e-5, atol=1e-6)
    assert result[0] == pytest.approx(100.0 * np.mean(total.argmax(1) == one_view['labels']))

    # test.py, unlabelled: predictions without accuracy, in the score file and the csv
    unlabelled = tmp_path / 'score_test'
    assert test_main.main(['--dataset', dataset, '--weights', best, '-j', '0',
                           '--test_list', str(lists / 'test.txt'), '--save_scores',
                           str(unlabelled), '--csv_file', str(tmp_path / 'test.csv')]) is None
    (test_file,) = [str(unlabelled / f) for f in os.listdir(unlabelled) if f.endswith('.npz')]
    test_scores = load_scores(test_file)
    assert set(test_scores['labels']) == {-1}
    test_top1 = [CLASSES[i] for i in test_scores['scores'].argmax(1)]
    csv_rows = (tmp_path / 'test.csv').read_text().splitlines()
    assert [row.split(';')[-1] for row in csv_rows] == test_top1

    # predict.py on gen_label's lists, no --dataset: the checkpoint's names, the lists' labels
    predictions = predict_main.main([str(lists / 'test.txt'), '--root', str(tree),
                                     '--weights', best, '-j', '0',
                                     '--json', str(tmp_path / 'test.json')])
    assert [p.names[0] for p in predictions] == test_top1
    assert all('label' not in record for record in json.loads(
        (tmp_path / 'test.json').read_text()))
    labelled = predict_main.main([str(lists / 'val.txt'), '--root', str(tree), '--weights', best,
                                  '-j', '0', '--json', str(tmp_path / 'val.json')])
    records = json.loads((tmp_path / 'val.json').read_text())
    assert [r['label'] for r in records] == [r.label for r in val]
    assert [p.indices[0] for p in labelled] == list(one_view['scores'].argmax(1))

    # tools/export.py, then onnxruntime on the same clip with the documented preprocessing
    onnxruntime = pytest.importorskip('onnxruntime')
    clip = str(tree / 'test' / 'clip_1.mp4')
    export_main(['--weights', best, '--video', clip, '--format', 'onnx',
                 '--output', str(tmp_path / 'model')])
    session = onnxruntime.InferenceSession(str(tmp_path / 'model.onnx'),
                                           providers=['CPUExecutionProvider'])
    meta = {k: json.loads(v) for k, v in session.get_modelmeta().custom_metadata_map.items()}
    assert meta['categories'] == CLASSES
    capture, frames = cv2.VideoCapture(clip), []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame[:, :, ::-1])  # BGR -> RGB, the model's channel order
    (logits,) = session.run(None, {'frames': preprocess_for_export(frames, meta)})
    (single,) = predict_main.main([clip, '--weights', best, '-j', '0'])
    assert meta['categories'][int(logits[0].argmax())] == single.names[0] == test_top1[1]
