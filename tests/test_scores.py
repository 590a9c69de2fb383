"""Score files end to end: the release's layout, the lock and settings check of test.py's
writes, average_scores' evaluation groups, and test.py / average_scores on unlabelled lists."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from sklearn.metrics import confusion_matrix

import average_scores
import test as test_main
from ops.checkpoint import save_checkpoint
from ops.dataset import parse_list_file
from ops.dataset_config import get_dataset_config
from ops.models import TemporalModel
from ops.scores import load_scores, lock_score_file, save_scores
from tests.conftest import ROOT, free_port

NAME = 'synthetic_MASNet_resnet10_4f_1crop_1clip_32px.npz'


@pytest.fixture(scope='module')
def setup(tiny_data_root, tmp_path_factory):
    """(checkpoint, val list relabelled so that the model gets 10 of its 16 videos right)."""
    tmp = tmp_path_factory.mktemp('scores')
    torch.manual_seed(0)
    model = TemporalModel(8, 4, 'MASNet', 'resnet10', input_size=32)
    torch.nn.init.normal_(model.new_fc.weight, 0, 0.1)  # logits of a useful size
    weights = str(tmp / 'model.pth.tar')
    save_checkpoint({'epoch': 1, 'arch': 'resnet10', 'type': 'MASNet', 'num_segments': 4,
                     'input_size': 32, 'best_prec1': 0.0, 'state_dict': model.state_dict()},
                    weights)
    cfg = get_dataset_config('synthetic', tiny_data_root)
    run_test(tiny_data_root, weights, cfg.val_list, str(tmp / 'first'))
    predictions = load_scores(str(tmp / 'first' / NAME))['predictions']
    records = parse_list_file(cfg.val_list)
    labels = [int(p) if i < 10 else (int(p) + 1) % 8 for i, p in enumerate(predictions)]
    relabelled = write_list(tmp / 'relabelled.txt', records, labels)
    return weights, relabelled, records, labels


def write_list(path, records, labels):
    path.write_text(''.join(f'{r.path} {r.num_frames} {label}\n'
                            for r, label in zip(records, labels)))
    return str(path)


def run_test(data_root, weights, list_file, score_dir, *extra):
    return test_main.main(['--dataset', 'synthetic', '--dataset_path', data_root, '--weights',
                           weights, '--test_list', list_file, '-j', '0', '--batch_size', '8',
                           '--save_scores', score_dir, *extra])


def release_top1(files):
    """Top-1 (percent) of score files as the release's average_scores.py computes it: the
    sum of the (N, 1, C) `scores` arrays, ranked per video."""
    total, labels = None, None
    for path in files:
        data = np.load(path)
        labels, scores = data['labels'], data['scores']
        assert np.argmax(scores, 2)[:, 0].shape == labels.shape  # its compute_acc
        total = scores if total is None else total + scores
    hits = [int(np.argmax(total[k, :], axis=1)[0] == labels[k]) for k in range(len(labels))]
    return 100.0 * sum(hits) / len(labels)


@pytest.mark.slow
def test_score_file_in_the_release_layout(tiny_data_root, setup, tmp_path):
    weights, relabelled, _, labels = setup
    top1, _, _ = run_test(tiny_data_root, weights, relabelled, str(tmp_path))
    assert top1 == pytest.approx(62.5)  # 10 of 16 by construction
    path = str(tmp_path / NAME)
    data = np.load(path)
    scores = data['scores']
    assert scores.shape == (16, 1, 8) and scores.dtype == np.float32
    assert list(data['labels']) == labels
    np.testing.assert_array_equal(data['predictions'], scores[:, 0].argmax(1))
    np.testing.assert_array_equal(  # the release's cf: sklearn on the labels and predictions
        data['cf'], confusion_matrix(data['labels'], data['predictions']).astype(float))
    assert release_top1([path]) == pytest.approx(top1)
    assert 100.0 * np.mean(data['predictions'] == data['labels']) == pytest.approx(top1)
    # this code reads it back as (N, C), and its ensemble is the release's sum
    assert load_scores(path)['scores'].shape == (16, 8)
    _, (ours, _, _) = average_scores.main([path, path])
    assert ours == pytest.approx(release_top1([path, path]))


def test_earlier_score_files_are_still_read(tmp_path):
    """This project's earlier (N, C) files and the release's (N, 1, C) ones."""
    scores = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]], dtype=np.float32)
    np.savez(tmp_path / 'old.npz', scores=scores, labels=[1, 0, 0], video_ids=['a', 'b', 'c'])
    np.savez(tmp_path / 'release.npz', scores=scores[:, None], labels=[1, 0, 0],
             predictions=[1, 0, 1], cf=np.eye(2))
    for name in ('old.npz', 'release.npz'):
        np.testing.assert_array_equal(load_scores(str(tmp_path / name))['scores'], scores)
    _, (top1, _, _) = average_scores.main([str(tmp_path / 'old.npz'),
                                           str(tmp_path / 'release.npz')])
    assert top1 == pytest.approx(200 / 3)


def one_line_error(capsys, call):
    with pytest.raises(SystemExit) as exit_info:
        call()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.mark.slow
def test_score_file_replaced_only_by_the_same_evaluation(tiny_data_root, setup, tmp_path,
                                                         capsys):
    weights, relabelled, _, _ = setup
    out = str(tmp_path / 'score')
    first = run_test(tiny_data_root, weights, relabelled, out)
    for flag, setting in ((['--softmax'], 'softmax'), (['--max_videos', '3'], 'max_videos'),
                          (['--dense_sample', '--test_clips', '1'], 'sampling')):
        err = one_line_error(capsys, lambda: run_test(tiny_data_root, weights, relabelled, out,
                                                      *flag))
        assert f'{setting}: ' in err and '--overwrite' in err and NAME in err
        assert not bool(np.load(os.path.join(out, NAME))['softmax'])  # untouched
    os.utime(os.path.join(out, NAME), (0, 0))
    assert run_test(tiny_data_root, weights, relabelled, out) == pytest.approx(first)
    assert os.stat(os.path.join(out, NAME)).st_mtime > 0  # the same evaluation replaced it
    run_test(tiny_data_root, weights, relabelled, out, '--softmax', '--overwrite')
    assert bool(np.load(os.path.join(out, NAME))['softmax'])


@pytest.mark.slow
def test_a_score_file_being_written_is_not_written_by_another_run(tiny_data_root, setup,
                                                                  tmp_path, capsys):
    weights, relabelled, _, _ = setup
    out = str(tmp_path / 'score')
    held = lock_score_file(os.path.join(out, NAME))  # as a running test.py holds it
    try:
        err = one_line_error(capsys, lambda: run_test(tiny_data_root, weights, relabelled, out))
        assert f'pid {os.getpid()}' in err and 'another test.py' in err
        assert not os.path.exists(os.path.join(out, NAME))
    finally:
        held.close()


@pytest.mark.distributed
def test_a_locked_score_file_stops_every_torchrun_process_in_one_line(tiny_data_root, setup,
                                                                      tmp_path):
    """Only rank 0 takes the lock; the other process must not wait for it in a collective
    (run through tools/torchrun.py, the README's launcher without torchrun's tracebacks)."""
    weights, relabelled, _, _ = setup
    out = str(tmp_path / 'score')
    held = lock_score_file(os.path.join(out, NAME))
    try:
        res = subprocess.run(
            [sys.executable, 'tools/torchrun.py', '--nproc_per_node', '2',
             '--master_port', str(free_port()), 'test.py', '--dataset', 'synthetic',
             '--dataset_path', tiny_data_root, '--weights', weights, '--test_list', relabelled,
             '-j', '0', '--save_scores', out],
            cwd=ROOT, capture_output=True, text=True, timeout=120,
            env=dict(os.environ, OMP_NUM_THREADS='1'))
    finally:
        held.close()
    errors = [line for line in res.stderr.splitlines() if ': error: ' in line]
    assert res.returncode != 0 and 'Traceback' not in res.stderr, res.stderr[-2000:]
    assert len(errors) == 1 and 'another test.py' in errors[0], errors
    assert not os.path.exists(os.path.join(out, NAME))


@pytest.mark.slow
def test_two_concurrent_test_py_runs_leave_the_file_of_the_one_that_reports(
        tiny_data_root, setup, tmp_path):
    """Started together with different settings: one writes, the other refuses in one line
    (the lock while the first runs, the settings check after it), whatever the timing."""
    weights, relabelled, _, _ = setup
    out = str(tmp_path / 'score')
    common = [sys.executable, 'test.py', '--dataset', 'synthetic', '--dataset_path',
              tiny_data_root, '--weights', weights, '--test_list', relabelled, '-j', '0',
              '--save_scores', out]
    runs = [subprocess.Popen(common + extra, cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for extra in ([], ['--softmax'])]
    results = [(*run.communicate(timeout=300), run.returncode) for run in runs]
    results = [(rc, stdout, stderr) for stdout, stderr, rc in results]
    written = [k for k, (_, stdout, _) in enumerate(results) if 'scores written' in stdout]
    assert len(written) == 1, results
    refused = results[1 - written[0]]
    assert refused[0] == 2 and len(refused[2].strip().splitlines()) == 1, refused
    assert bool(np.load(os.path.join(out, NAME))['softmax']) == (written[0] == 1)


def save_group(folder, name, labels, ids, dataset='synthetic', list_file='val.txt'):
    scores = np.eye(3, dtype=np.float32)[np.asarray(labels)] + 0.1
    save_scores(str(folder / name), scores, labels, ids, dataset=dataset, list_file=list_file)


def test_bare_average_scores_averages_one_evaluation_group(tmp_path, capsys):
    folder = tmp_path / 'score'
    save_group(folder, 'synthetic_a.npz', [0, 1, 2], ['x', 'y', 'z'])
    save_group(folder, 'synthetic_b.npz', [0, 1, 2], ['x', 'y', 'z'])
    combined, (top1, _, _) = average_scores.main(['--score_dir', str(folder)])
    assert combined.shape == (3, 3) and top1 == 100.0
    save_group(folder, 'other_a.npz', [1, 1], ['p', 'q'], dataset='other', list_file='o.txt')
    err = one_line_error(capsys, lambda: average_scores.main(['--score_dir', str(folder)]))
    assert '2 evaluation groups' in err and '--dataset' in err
    assert 'dataset synthetic, list val.txt, 3 classes, 3 videos: synthetic_a.npz, ' \
           'synthetic_b.npz' in err and 'other_a.npz' in err
    combined, _ = average_scores.main(['--score_dir', str(folder), '--dataset', 'other'])
    assert combined.shape == (2, 3)
    # the same dataset, another list (e.g. --max_num): another group
    save_group(folder, 'synthetic_c.npz', [0, 1], ['x', 'y'], list_file='val.txt')
    err = one_line_error(capsys, lambda: average_scores.main(['--score_dir', str(folder),
                                                              '--dataset', 'synthetic']))
    assert '2 evaluation groups' in err and '2 videos: synthetic_c.npz' in err


def test_files_without_group_record_are_grouped_by_what_they_hold(tmp_path, capsys):
    folder = tmp_path / 'score'
    folder.mkdir()
    scores = np.ones((3, 1, 4), dtype=np.float32)
    for name, labels in (('v1_8.npz', [0, 1, 2]), ('v1_16.npz', [0, 1, 2]),
                         ('v2_8.npz', [3, 1, 2])):
        np.savez(folder / name, scores=scores, labels=labels, predictions=[0, 0, 0])
    err = one_line_error(capsys, lambda: average_scores.main(['--score_dir', str(folder)]))
    assert '4 classes, 3 videos: v1_16.npz, v1_8.npz]' in err and 'v2_8.npz]' in err
    os.remove(folder / 'v2_8.npz')
    combined, _ = average_scores.main(['--score_dir', str(folder)])
    np.testing.assert_array_equal(combined, 2 * scores[:, 0])


@pytest.mark.slow
def test_unlabelled_and_partly_labelled_lists(tiny_data_root, setup, tmp_path, capsys):
    weights, relabelled, records, labels = setup
    labelled = str(tmp_path / 'labelled')
    run_test(tiny_data_root, weights, relabelled, labelled)
    reference = load_scores(os.path.join(labelled, NAME))

    unlabelled = write_list(tmp_path / 'test.txt', records, [-1] * len(records))
    out, csv, submission = (str(tmp_path / n) for n in ('score', 'pred.csv', 'sub.csv'))
    capsys.readouterr()
    assert run_test(tiny_data_root, weights, unlabelled, out, '--csv_file', csv,
                    '--submission', submission) is None
    printed = capsys.readouterr().out
    assert 'the list is unlabelled' in printed and 'Prec@1' not in printed
    data = load_scores(os.path.join(out, NAME))
    assert list(data['labels']) == [-1] * 16 and data['cf'].shape == (0, 0)
    np.testing.assert_allclose(data['scores'], reference['scores'], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(data['predictions'], reference['predictions'])
    assert not os.path.exists(os.path.join(out, NAME[:-4] + '_analysis'))
    categories = get_dataset_config('synthetic', tiny_data_root).categories
    expected = [f'{r.path};{categories[p]}' for r, p in zip(records, data['predictions'])]
    assert open(csv).read().splitlines() == expected
    rows = [line.split(';') for line in open(submission).read().splitlines()]
    assert [len(r) for r in rows] == [6] * 16
    assert [r[1] for r in rows] == [categories[p] for p in data['predictions']]

    # average_scores: an ensemble without accuracy, its predictions written
    combined, result = average_scores.main([os.path.join(out, NAME), '--csv_file', csv])
    assert result is None and 'no labelled video' in capsys.readouterr().out
    assert open(csv).read().splitlines() == expected

    # partly labelled: the accuracy of the labelled videos (the even ones: 8 videos)
    partial = write_list(tmp_path / 'partial.txt', records,
                         [label if i % 2 == 0 else -1 for i, label in enumerate(labels)])
    top1, _, _ = run_test(tiny_data_root, weights, partial, str(tmp_path / 'partial'))
    right = sum(p == label for i, (p, label) in enumerate(zip(data['predictions'], labels))
                if i % 2 == 0)
    assert right not in (0, 8) and top1 == pytest.approx(100.0 * right / 8)
    assert '8 of 16 videos unlabelled' in capsys.readouterr().out


def test_two_checkpoints_writing_one_score_file_are_refused(tiny_data_root, setup, tmp_path,
                                                            capsys):
    weights, relabelled, _, _ = setup
    pair = ['--weights', f'{weights},{weights}']  # the last --weights counts
    err = one_line_error(capsys, lambda: run_test(tiny_data_root, weights, relabelled,
                                                  str(tmp_path), *pair))
    assert f"would write one score file '{NAME}'" in err and "--save_scores ''" in err
    assert not os.listdir(tmp_path)


@pytest.mark.slow
def test_max_num_counts_batches_as_the_release_and_max_videos_videos(tiny_data_root, setup,
                                                                     tmp_path):
    """The release's ``if i >= max_num: break`` over the loader: --max_num N scores N batches
    (N x --batch_size videos); --max_videos N scores N videos."""
    weights, relabelled, _, _ = setup
    run_test(tiny_data_root, weights, relabelled, str(tmp_path / 'b'), '--max_num', '1',
             '--batch_size', '3')
    data = np.load(str(tmp_path / 'b' / NAME))
    assert len(data['labels']) == 3 and int(data['max_videos']) == 3
    run_test(tiny_data_root, weights, relabelled, str(tmp_path / 'v'), '--max_videos', '5')
    assert len(np.load(str(tmp_path / 'v' / NAME))['labels']) == 5
    with pytest.raises(SystemExit):
        test_main.parse_args(['--weights', weights, '--max_num', '1', '--max_videos', '2'])


@pytest.mark.slow
def test_release_score_names_run_the_release_average_scores(tiny_data_root, setup, tmp_path):
    """--release_score_name writes the name the release's average_scores.py reads
    (<dataset>_segment<T>_crops<C>_clips<K>_shape<S>.npz), in its layout."""
    weights, relabelled, _, _ = setup
    out = tmp_path / 'EN'
    top1, _, _ = run_test(tiny_data_root, weights, relabelled, str(out), '--release_score_name',
                          '--test_crops', '3', '--full_res', '--twice_sample')
    # the release: args.dataset + '_segment' + T + '_crops' + C + '_clips' + K + '_shape' + S;
    # S its input_size_log, the crop side (256 at --full_res of 224; here 32 * 256 // 224)
    name = 'synthetic' + '_segment' + '4' + '_crops' + '3' + '_clips' + '2' + '_shape' + '36.npz'
    assert sorted(os.listdir(out)) == sorted([name, name + '.lock', name[:-4] + '_analysis'])
    assert release_top1([str(out / name)]) == pytest.approx(top1)


def quarter_right(folder, name='a.npz'):
    """A score file of 8 videos of 4 classes, 2 of them right (top-1 25%); video 0 is wrong."""
    labels = np.array([0, 1, 2, 3, 0, 1, 2, 3])
    predictions = np.array([1, 2, 2, 3, 1, 2, 3, 0])  # right: videos 2 and 3
    scores = np.eye(4, dtype=np.float32)[predictions] + 0.1
    path = str(folder / name)
    save_scores(path, scores, labels, [f'v{k}' for k in range(8)])
    return path, scores, labels


def test_non_finite_scores_are_refused_in_one_line(tmp_path, capsys):
    path, scores, labels = quarter_right(tmp_path)
    _, (top1, _, _) = average_scores.main([path])
    assert top1 == 25.0
    scores[0, labels[0]] = np.nan
    # what average_scores reported before it looked: the NaN at the label ranks first, so the
    # wrong video 0 counts as right (issue 28: 25.00 -> 37.50)
    from ops.scores import summarize
    assert summarize(scores, labels)[0] == 37.5
    save_scores(path, scores, labels, [f'v{k}' for k in range(8)])
    err = one_line_error(capsys, lambda: average_scores.main([path]))
    assert f"'{path}' holds 1 non-finite score value(s)" in err and '1 of 8 video(s)' in err
    scores[:] = np.inf
    save_scores(path, scores, labels, [f'v{k}' for k in range(8)])
    err = one_line_error(capsys, lambda: average_scores.main([path, path]))
    assert 'holds 32 non-finite score value(s)' in err and '8 of 8 video(s)' in err


def test_ensemble_weights_outside_their_domain_are_refused(tmp_path, capsys):
    first, scores, labels = quarter_right(tmp_path)
    second = str(tmp_path / 'b.npz')
    save_scores(second, np.eye(4, dtype=np.float32)[labels], labels, [f'v{k}' for k in range(8)])
    for weights, problem in ((['1', 'nan'], 'finite'), (['1', 'inf'], 'finite'),
                             (['0', '0'], 'sum to zero'), (['1', '-0.5'], 'negative')):
        err = one_line_error(capsys, lambda: average_scores.main([first, second, '--weights',
                                                                  *weights]))
        assert err.count('--weights') >= 1 and problem in err, err
    assert '--allow_negative_weights' in err
    # asked for: a negative weight subtracts; 2 * right - wrong picks the label everywhere
    combined, (top1, _, _) = average_scores.main([first, second, '--weights', '-1', '2',
                                                  '--allow_negative_weights'])
    np.testing.assert_allclose(combined, 2 * np.eye(4)[labels] - scores, rtol=1e-6)
    assert top1 == 100.0


def test_csv_file_of_a_folder_names_the_flag(tmp_path, capsys):
    path, _, _ = quarter_right(tmp_path)
    (tmp_path / 'out').mkdir()
    err = one_line_error(capsys, lambda: average_scores.main([path, '--csv_file',
                                                              str(tmp_path / 'out')]))
    assert err.endswith(f"--csv_file '{tmp_path / 'out'}' is a folder, not a file"), err
    assert '.tmp' not in err and not os.listdir(tmp_path / 'out')
