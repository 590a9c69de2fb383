"""predict.py and the Recognizer API: same answers as test.py, sliding windows, outputs, hub."""
import csv
import json
import os

import cv2
import numpy as np
import pytest
import torch

import predict as predict_entry
import test as test_entry
from ops import MASNet
from ops.dataset import DataError, TSNDataSet, parse_list_file
from ops.models import TemporalModel
from ops.recognizer import Recognizer, collect_inputs, frame_template
from ops.run_predict import sliding_window, write_video
from ops.scores import load_scores
from ops.synthetic import SYNTHETIC_CLASSES, generate_synthetic
from ops.transforms import build_transform
from tests.conftest import ROOT, randomize_bn
from tools.frames_to_video import main as frames_to_video

T, SIZE = 4, 64
FLAGS = ['--test_crops', '3', '--twice_sample', '--full_res']


def fit_head(model, clips, labels, num_class):
    """Least-squares new_fc on the model's frozen features so that clip i scores labels[i]."""
    model.eval()
    with torch.no_grad():
        feats = torch.stack([model.base_model(c.view(-1, 3, *c.shape[-2:])).view(
            -1, T, model.new_fc.in_features).mean(dim=(0, 1)) for c in clips])  # (N, D)
        feats = torch.cat([feats, torch.ones(len(clips), 1)], dim=1)  # bias column
        target = torch.full((len(clips), num_class), -4.0)
        target[torch.arange(len(clips)), torch.as_tensor(labels)] = 4.0
        solution = torch.linalg.pinv(feats.double()) @ target.double()  # (D+1, C)
        model.new_fc.weight.copy_(solution[:-1].t().float())
        model.new_fc.bias.copy_(solution[-1].float())
    return model


def save_model(model, path):
    torch.save({'epoch': 1, 'arch': model.arch, 'type': model.temporal_type,
                'num_segments': model.num_segments, 'input_size': model.input_size,
                'state_dict': model.state_dict(), 'best_prec1': 0.0}, path)


def read_folder(folder):
    names = sorted(os.listdir(folder))
    return [cv2.imread(os.path.join(folder, n)) for n in names]


@pytest.fixture(scope='module')
def fitted(tiny_data_root, tmp_path_factory):
    """A MAS-Net ResNet-10 checkpoint whose head separates the tiny val videos, and the val
    videos also written as mp4 files."""
    tmp = tmp_path_factory.mktemp('predict')
    torch.manual_seed(0)
    model = randomize_bn(TemporalModel(8, T, 'MASNet', 'resnet10', input_size=SIZE))
    frames_root = os.path.join(tiny_data_root, 'synthetic', 'frames')
    val_list = os.path.join(tiny_data_root, 'synthetic', 'valid.txt')
    transform = build_transform('val', model.crop_size, model.scale_size, model.input_mean,
                                model.input_std)
    data = TSNDataSet(frames_root, val_list, T, transform=transform, random_shift=False)
    clips, labels = zip(*[data[i] for i in range(len(data))])
    fit_head(model, clips, labels, 8)
    weights = str(tmp / 'fitted.pth.tar')
    save_model(model, weights)
    videos = tmp / 'videos'
    videos.mkdir()
    records = parse_list_file(val_list)
    for r in records:
        write_video(str(videos / f'{r.path}.mp4'), read_folder(os.path.join(frames_root, r.path)))
    (tmp / 'videos.txt').write_text(''.join(f'{videos / r.path}.mp4 - {r.label}\n'
                                            for r in records))
    return weights, tmp, records


def run_test_py(data_root, weights, list_file, out):
    test_entry.main(['--dataset', 'synthetic', '--dataset_path', data_root, '--weights', weights,
                     '--test_list', list_file, '--save_scores', str(out), '-j', '0', *FLAGS])
    (score_file,) = [f for f in os.listdir(out) if f.endswith('.npz')]
    return load_scores(os.path.join(out, score_file))


def run_predict(data_root, weights, source, *extra):
    return predict_entry.main([source, '--dataset', 'synthetic', '--dataset_path', data_root,
                               '--weights', weights, '-j', '0', '--batch_size', '3', *FLAGS,
                               *extra])


@pytest.mark.slow
def test_prediction_equals_test_py_on_files_folders_and_lists(tiny_data_root, fitted, tmp_path):
    weights, tmp, records = fitted
    frames_root = os.path.join(tiny_data_root, 'synthetic', 'frames')
    # frame folders: test.py on the labelled list vs predict.py on an unlabelled list and folders
    reference = run_test_py(tiny_data_root, weights,
                            os.path.join(tiny_data_root, 'synthetic', 'valid.txt'), tmp_path / 's1')
    expected = dict(zip(reference['video_ids'], reference['predictions']))
    assert len(set(expected.values())) > 3  # the head tells the videos apart
    unlabelled = tmp_path / 'test.txt'
    unlabelled.write_text(''.join(f'{r.path} -1\n' for r in records))
    listed = run_predict(tiny_data_root, weights, str(unlabelled), '--root', frames_root,
                         '--json', str(tmp_path / 'p.json'), '--csv', str(tmp_path / 'p.csv'))
    assert {p.video: p.top1 for p in listed} == expected
    probabilities = np.array([[0.0] * 8 for _ in listed])
    for row, p in zip(probabilities, listed):
        row[p.indices] = p.probabilities
    softmax = torch.as_tensor(reference['scores']).softmax(dim=1).numpy()
    np.testing.assert_allclose(probabilities, softmax * (probabilities > 0), atol=1e-6)
    folder = run_predict(tiny_data_root, weights, os.path.join(frames_root, records[0].path))
    assert [p.top1 for p in folder] == [expected[records[0].path]]
    # --mas_form reference: the readable MAM/MSM/TIM forwards run, with the same probabilities
    readable_calls = []
    forward = MASNet.MAM.forward
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(MASNet.MAM, 'forward',
                      lambda self, x: readable_calls.append(1) or forward(self, x))
        readable = run_predict(tiny_data_root, weights,
                               os.path.join(frames_root, records[0].path), '--mas_form',
                               'reference')
    assert readable_calls and readable[0].top1 == folder[0].top1
    np.testing.assert_allclose(readable[0].probabilities, folder[0].probabilities, atol=1e-5)
    # video files: test.py on a labelled list of mp4 files vs predict.py on the folder / a file
    reference = run_test_py(tiny_data_root, weights, str(tmp / 'videos.txt'), tmp_path / 's2')
    expected = {os.path.basename(v): p for v, p in zip(reference['video_ids'],
                                                       reference['predictions'])}
    by_folder = run_predict(tiny_data_root, weights, str(tmp / 'videos'))
    assert {p.video: p.top1 for p in by_folder} == expected
    one = run_predict(tiny_data_root, weights, str(tmp / 'videos' / f'{records[1].path}.mp4'),
                      '--topk', '3')
    assert one[0].top1 == expected[f'{records[1].path}.mp4'] and len(one[0].names) == 3
    # the written outputs
    saved = json.load(open(tmp_path / 'p.json'))
    assert [s['video'] for s in saved] == [r.path for r in records]
    assert saved[0]['topk'][0]['class'] == SYNTHETIC_CLASSES[listed[0].top1]
    rows = list(csv.DictReader(open(tmp_path / 'p.csv')))
    assert rows[0]['class1'] == listed[0].names[0] and rows[0]['label'] == ''
    assert float(rows[0]['probability1']) == pytest.approx(listed[0].probabilities[0], abs=1e-6)


@pytest.mark.slow
def test_python_api_on_path_and_frames(tiny_data_root, fitted):
    weights, tmp, records = fitted
    recognizer = Recognizer.from_checkpoint(
        weights, os.path.join(tiny_data_root, 'synthetic', 'category.txt'), test_crops=3,
        twice_sample=True)
    folder = os.path.join(tiny_data_root, 'synthetic', 'frames', records[2].path)
    by_path = recognizer.predict(folder, topk=8)
    by_frames = recognizer.predict(read_folder(folder), topk=8)
    assert by_path.indices == by_frames.indices
    np.testing.assert_allclose(by_path.probabilities, by_frames.probabilities, atol=1e-6)
    assert sum(by_path.probabilities) == pytest.approx(1.0, abs=1e-5)
    assert by_path.top1 == records[2].label  # the fitted head is right on this video
    assert recognizer.sample_indices(8).tolist() == [2, 4, 6, 8, 1, 3, 5, 7]  # two clips


@pytest.mark.slow
def test_python_api_takes_lists_arrays_tensors_in_either_color_order(tiny_data_root, fitted):
    weights, _, records = fitted
    recognizer = Recognizer.from_checkpoint(
        weights, os.path.join(tiny_data_root, 'synthetic', 'category.txt'))
    bgr = read_folder(os.path.join(tiny_data_root, 'synthetic', 'frames', records[3].path))
    rgb = [f[..., ::-1] for f in bgr]  # what PIL or PyAV's rgb24 would give
    reference = recognizer.predict(bgr, topk=8)
    inputs = {'array': (np.stack(bgr), 'bgr'), 'tensor': (torch.from_numpy(np.stack(bgr)), 'bgr'),
              'tensor list': ([torch.from_numpy(f) for f in bgr], 'bgr'),
              'rgb list': (rgb, 'rgb'), 'rgb array': (np.stack(rgb), 'rgb'),
              'rgb tensor': (torch.from_numpy(np.stack(rgb).copy()), 'rgb')}
    for name, (frames, order) in inputs.items():
        got = recognizer.predict(frames, topk=8, color_order=order)
        assert got.indices == reference.indices, name
        assert got.probabilities == reference.probabilities, name  # the same bytes in
    # the colours matter on this model: the wrong order gives other scores
    assert recognizer.predict(rgb, topk=8).probabilities != reference.probabilities
    for bad, match in (((np.stack(bgr).astype(np.float32)), 'uint8'),
                       (torch.from_numpy(np.stack(bgr)).permute(0, 3, 1, 2), r'\(H, W, 3\)'),
                       (bgr[0], r'not ndarray of shape \(48, 64, 3\)')):
        with pytest.raises(DataError, match=match):
            recognizer.predict(bad)
    with pytest.raises(DataError, match='color_order'):
        recognizer.predict(bgr, color_order='RGB ')


@pytest.mark.slow
def test_submission_and_gen_label_test_list(tiny_data_root, fitted, tmp_path):
    weights, _, records = fitted
    frames_root = os.path.join(tiny_data_root, 'synthetic', 'frames')
    from tools.gen_label import main as gen_label
    annotations = tmp_path / 'ann'
    annotations.mkdir()
    names = {r.path: i for i, r in enumerate(records[:4])}
    json.dump({c: str(i) for i, c in enumerate(SYNTHETIC_CLASSES)},
              open(annotations / 'labels.json', 'w'))
    for name in ('train.json', 'validation.json'):
        json.dump([{'id': records[0].path, 'template': SYNTHETIC_CLASSES[0]}],
                  open(annotations / name, 'w'))
    json.dump([{'id': v} for v in list(names) + ['missing_video']],
              open(annotations / 'test.json', 'w'))
    gen_label(['sthv2', str(annotations), frames_root, str(tmp_path / 'out')])
    test_list = parse_list_file(str(tmp_path / 'out' / 'test.txt'))
    assert [r.path for r in test_list] == list(names)  # the one without frames is skipped
    assert all(r.label == -1 and r.num_frames == records[i].num_frames
               for i, r in enumerate(test_list))
    submission = tmp_path / 'submission.csv'
    predictions = run_predict(tiny_data_root, weights, str(tmp_path / 'out' / 'test.txt'),
                              '--root', frames_root, '--submission', str(submission))
    lines = submission.read_text().splitlines()
    assert lines == [';'.join([p.video] + p.names[:5]) for p in predictions]
    assert all(len(line.split(';')) == 6 for line in lines)


def test_input_errors_and_frame_templates(tmp_path):
    folder = tmp_path / 'clip'
    folder.mkdir()
    for i in (1, 2):
        (folder / f'img_{i:05d}.jpg').write_bytes(b'')
    assert frame_template(str(folder), '{:05d}.jpg') == 'img_{:05d}.jpg'
    bad = tmp_path / 'bad.txt'
    bad.write_text('a 3 1\nb x\n')
    with pytest.raises(Exception, match=r'bad.txt:2: cannot parse'):
        parse_list_file(str(bad))
    with pytest.raises(Exception, match='neither a video file'):
        collect_inputs(str(tmp_path / 'nothing'))


def test_list_inputs_are_checked_as_test_lists_are(tmp_path):
    """A list given to predict.py is read by the dataset's loader: labels against the model's
    classes (when known), absent videos named with the flag that sets their folder."""
    (tmp_path / 'clip').mkdir()
    for i in (1, 2, 3):
        cv2.imwrite(str(tmp_path / 'clip' / f'img_{i:05d}.jpg'), np.zeros((8, 8, 3), np.uint8))
    listed = tmp_path / 'list.txt'
    listed.write_text('clip - 1\n')
    root, records = collect_inputs(str(listed), categories=['a', 'b'])
    assert root == str(tmp_path) and [(r.path, r.num_frames, r.label) for r in records] == \
        [('clip', 3, 1)]
    with pytest.raises(Exception, match=r"list.txt:1: label 1 of 'clip' is not in \[0, 1\)"):
        collect_inputs(str(listed), categories=['a'])
    assert collect_inputs(str(listed))[1][0].label == 1  # no classes known: no check
    listed.write_text('clip - 1\nabsent 4 0\n')
    with pytest.raises(Exception, match=r"list.txt:2: '.*absent' does not exist .*check --root"):
        collect_inputs(str(listed), categories=['a', 'b'])


# ---- sliding windows ------------------------------------------------------------------------

@pytest.mark.slow
def test_sliding_window_switches_class_at_the_boundary(tmp_path):
    """Two clips of different classes back to back: windows inside the first clip give its
    class, windows inside the second its class, with one switch at a window over the seam."""
    generate_synthetic(str(tmp_path / 'data'), train_per_class=0, val_per_class=1, width=64,
                       height=48, min_frames=40, max_frames=40)
    video = tmp_path / 'long.mp4'
    starts = frames_to_video([str(tmp_path / 'data' / 'frames' / 'valid_0_0000'),  # class 0
                              str(tmp_path / 'data' / 'frames' / 'valid_4_0000'),  # class 4
                              '--output', str(video), '--fps', '10'])
    assert starts == [1, 41]
    window, stride, boundary = 16, 4, 40
    torch.manual_seed(1)
    model = randomize_bn(TemporalModel(8, T, 'MASNet', 'resnet10', input_size=SIZE))
    recognizer = Recognizer(model, SYNTHETIC_CLASSES)
    capture = cv2.VideoCapture(str(video))
    decoded = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        decoded.append(frame)
    starts = range(0, len(decoded) - window + 1, stride)
    pure = [s for s in starts if s + window <= boundary or s >= boundary]
    clips = [recognizer.transform([decoded[s:s + window][i - 1] for i in
                                   recognizer.sample_indices(window)], 0)[0] for s in pure]
    fit_head(model, clips, [0 if s < boundary else 4 for s in pure], 8)
    weights = str(tmp_path / 'two.pth.tar')
    save_model(model, weights)
    (tmp_path / 'category.txt').write_text('\n'.join(SYNTHETIC_CLASSES) + '\n')

    out_csv, annotated = tmp_path / 'windows.csv', tmp_path / 'annotated.mp4'
    predictions = predict_entry.main([str(video), '--weights', weights, '--categories',
                                      str(tmp_path / 'category.txt'), '--window', str(window),
                                      '--stride', str(stride), '--csv', str(out_csv),
                                      '--annotate', str(annotated)])
    assert [(p.extra['start_frame'], p.extra['end_frame']) for p in predictions] == \
        [(s + 1, s + window) for s in starts]
    top1 = [p.top1 for p in predictions]
    for s, label in zip(starts, top1):
        if s + window <= boundary:
            assert label == 0, (s, top1)
        elif s >= boundary:
            assert label == 4, (s, top1)
    switch = next(i for i, label in enumerate(top1) if label != 0)
    assert all(label == 4 for label in top1[switch:])  # one switch, no flicker back
    assert starts[switch] < boundary < starts[switch] + window  # the window over the seam
    rows = list(csv.DictReader(open(out_csv)))
    assert float(rows[3]['start_s']) == pytest.approx(starts[3] / 10.0)
    assert float(rows[3]['end_s']) == pytest.approx((starts[3] + window) / 10.0)
    assert [r['class1'] for r in rows] == [SYNTHETIC_CLASSES[i] for i in top1]
    out = cv2.VideoCapture(str(annotated))
    assert int(out.get(cv2.CAP_PROP_FRAME_COUNT)) == len(decoded)
    # a source shorter than the window gives one prediction over all of it
    short = predict_entry.main([str(video), '--weights', weights, '--categories',
                                str(tmp_path / 'category.txt'), '--window', '200'])
    assert [(p.extra['start_frame'], p.extra['end_frame']) for p in short] == [(1, len(decoded))]


@pytest.mark.slow
def test_annotated_video_appears_only_when_complete(tmp_path, monkeypatch):
    """--annotate's video is written beside its path and renamed at the end: a failure
    mid-stream leaves no file (nor a temporary one), the old file stays."""
    frames = [np.full((48, 64, 3), 10 * i, np.uint8) for i in range(12)]
    video, out = str(tmp_path / 'in.avi'), tmp_path / 'out' / 'annotated.mp4'
    write_video(video, frames, fps=10)
    recognizer = Recognizer(TemporalModel(8, 4, 'TSN', 'resnet10', input_size=32).eval(),
                            SYNTHETIC_CLASSES)
    done = list(sliding_window(recognizer, video, 8, 2, annotate=str(out)))
    assert len(done) == 3 and int(cv2.VideoCapture(str(out)).get(cv2.CAP_PROP_FRAME_COUNT)) == 12
    before = out.read_bytes()
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise DataError('decoder gave up')
        return done[0]

    monkeypatch.setattr(recognizer, 'predict_frames', failing)
    with pytest.raises(DataError):
        list(sliding_window(recognizer, video, 8, 2, annotate=str(out)))
    assert out.read_bytes() == before and os.listdir(out.parent) == ['annotated.mp4']


# ---- torch.hub ------------------------------------------------------------------------------

@pytest.mark.slow
def test_hubconf_builds_the_model_from_a_local_weight_file(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = randomize_bn(TemporalModel(5, 4, 'MASNet', 'resnet50')).eval()
    path = tmp_path / 'weights.pth'
    torch.save({'state_dict': model.state_dict()}, path)
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))  # set_dir would outlive the test
    hub_dir = tmp_path / 'torch' / 'hub'
    loaded = torch.hub.load(ROOT, 'masnet_resnet50', source='local', weights=str(path),
                            num_classes=5, num_segments=4)
    assert not loaded.training and loaded.num_segments == 4
    x = torch.randn(1, 4 * 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert not hub_dir.exists()  # nothing downloaded, nothing cached


# ---- error analysis in test.py --------------------------------------------------------------

@pytest.mark.slow
def test_test_py_writes_confusion_matrix_and_top5(tiny_data_root, fitted, tmp_path):
    weights, _, records = fitted
    # relabel every third video, so that the matrix has off-diagonal entries
    relabelled = tmp_path / 'val.txt'
    relabelled.write_text(''.join(
        f'{r.path} {r.num_frames} {(r.label + 3) % 8 if i % 3 == 0 else r.label}\n'
        for i, r in enumerate(records)))
    scores = run_test_py(tiny_data_root, weights, str(relabelled), tmp_path / 'score')
    folder = tmp_path / 'score' / (next(f for f in os.listdir(tmp_path / 'score')
                                        if f.endswith('.npz'))[:-4] + '_analysis')
    with np.load(folder / 'confusion.npz') as data:
        matrix, accuracy = data['confusion'], data['per_class_accuracy']
        assert list(data['categories']) == SYNTHETIC_CLASSES
    labels, predictions = scores['labels'], scores['predictions']
    expected = np.zeros((8, 8), dtype=np.int64)
    for y, p in zip(labels, predictions):
        expected[y, p] += 1
    np.testing.assert_array_equal(matrix, expected)  # rows: true class, columns: predicted
    assert matrix.sum() == len(records)
    assert np.trace(matrix) == int((labels == predictions).sum())
    assert 0 < np.trace(matrix) < len(records)
    for c in range(8):
        assert accuracy[c] == pytest.approx(100.0 * np.mean(predictions[labels == c] == c))
    rows = list(csv.reader(open(folder / 'confusion.csv')))
    assert rows[0][1:] == SYNTHETIC_CLASSES
    assert np.array_equal(np.array([r[1:] for r in rows[1:]], dtype=np.int64), matrix)
    per_class = list(csv.DictReader(open(folder / 'per_class.csv')))
    assert [int(r['correct']) for r in per_class] == np.diag(matrix).tolist()
    top5 = list(csv.DictReader(open(folder / 'top5.csv')))
    assert [r['video'] for r in top5] == list(scores['video_ids'])
    assert [r['class1'] for r in top5] == [SYNTHETIC_CLASSES[p] for p in predictions]
    assert [r['label'] for r in top5] == [SYNTHETIC_CLASSES[y] for y in labels]
    second = np.argsort(-scores['scores'], axis=1)[:, 1]
    assert [r['class2'] for r in top5] == [SYNTHETIC_CLASSES[p] for p in second]
    assert (folder / 'confusion.png').stat().st_size > 10000


def test_most_confused_pairs():
    from ops.evaluation import most_confused
    matrix = np.array([[5, 0, 2], [4, 1, 0], [0, 1, 3]])
    assert most_confused(matrix, 2) == [(1, 0, 4), (0, 2, 2)]
    assert most_confused(np.eye(3, dtype=int)) == []


@pytest.mark.slow
def test_seeded_random_sampling_reaches_test_py_predict_py_and_the_score_file(
        tiny_data_root, fitted, tmp_path):
    """--test_sampling random --test_seed S (one registered function and its name): test.py
    and predict.py draw the same clips of each video (seeded by its path), so they give the
    same scores; the score file names and records the sampling and the seed; another seed
    draws other clips."""
    weights, _, records = fitted
    frames_root = os.path.join(tiny_data_root, 'synthetic', 'frames')
    val_list = os.path.join(tiny_data_root, 'synthetic', 'valid.txt')
    flags = ['--test_sampling', 'random', '--test_clips', '2']

    def scores(seed, out):
        test_entry.main(['--dataset', 'synthetic', '--dataset_path', tiny_data_root,
                         '--weights', weights, '--save_scores', str(out), '-j', '0', *flags,
                         '--test_seed', seed])
        name = f'synthetic_MASNet_resnet10_{T}f_1crop_2clip_{SIZE}px_random_seed{seed}.npz'
        assert [n for n in os.listdir(out) if n.endswith('.npz')] == [name]
        return np.load(os.path.join(out, name))

    first = scores('5', tmp_path / 'a')
    assert (str(first['sampling']), int(first['test_seed']), int(first['num_clips'])) == \
        ('random', 5, 2)
    np.testing.assert_array_equal(scores('5', tmp_path / 'b')['scores'], first['scores'])
    assert not np.allclose(scores('6', tmp_path / 'c')['scores'], first['scores'], atol=1e-4)
    predicted = predict_entry.main([val_list, '--root', frames_root, '--weights', weights,
                                    '-j', '0', '--dataset', 'synthetic', '--dataset_path',
                                    tiny_data_root, '--topk', '8', *flags, '--test_seed', '5'])
    softmax = torch.as_tensor(first['scores'][:, 0]).softmax(dim=1).numpy()
    for p, row in zip(predicted, softmax):
        np.testing.assert_allclose(p.probabilities, row[p.indices], atol=1e-6)
