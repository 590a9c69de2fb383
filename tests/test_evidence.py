"""Calibration (ops/evaluation.py's ECE and reliability diagram, tools/calibration.py) and the
summary of several runs of one recipe (tools/summarize_runs.py) on constructed inputs whose
values are known by hand."""
import json

import numpy as np
import pytest

from ops.evaluation import calibration_bins, expected_calibration_error, write_calibration
from ops.scores import save_scores
from tools import calibration

# (confidence, right?) of 10 videos of 4 classes; in 15 bins of width 1/15 they fall into
# bin 13 (0.867, 0.933]: 0.88, 0.92 x 3 -> mean confidence 0.91, accuracy 3/4
# bin 8 (0.533, 0.6]: 0.55 x 4 -> 0.55, accuracy 2/4
# bin 5 (0.333, 0.4]: 0.35 x 2 -> 0.35, accuracy 1/2
VIDEOS = [(0.88, True), (0.92, True), (0.92, True), (0.92, False),
          (0.55, True), (0.55, True), (0.55, False), (0.55, False), (0.35, True), (0.35, False)]
# ECE = 0.4 |0.75 - 0.91| + 0.4 |0.5 - 0.55| + 0.2 |0.5 - 0.35|
HAND_ECE = 0.4 * 0.16 + 0.4 * 0.05 + 0.2 * 0.15


def constructed_probabilities():
    """(probabilities (10, 4), labels) with the confidences and outcomes of VIDEOS."""
    probabilities, labels = [], []
    for k, (confidence, right) in enumerate(VIDEOS):
        predicted = k % 4
        row = np.full(4, (1 - confidence) / 3)
        row[predicted] = confidence
        probabilities.append(row)
        labels.append(predicted if right else (predicted + 1) % 4)
    return np.array(probabilities), np.array(labels)


def test_expected_calibration_error_equals_the_hand_computed_value():
    probabilities, labels = constructed_probabilities()
    bins = calibration_bins(probabilities, labels)
    assert [k for k, b in enumerate(bins) if b['videos']] == [5, 8, 13]
    assert bins[13]['videos'] == 4 and bins[13]['confidence'] == pytest.approx(0.91)
    assert bins[13]['accuracy'] == 0.75 and bins[5]['accuracy'] == 0.5
    assert expected_calibration_error(bins) == pytest.approx(HAND_ECE)  # 0.114
    # a bin edge belongs to the lower bin, and confidence 1 to the last
    edge = calibration_bins(np.array([[0.6, 0.4], [1.0, 0.0]]), np.array([0, 0]), 5)
    assert edge[2]['videos'] == 1 and edge[4]['videos'] == 1


def test_calibration_of_a_score_file_of_logits_and_of_probabilities(tmp_path, capsys):
    probabilities, labels = constructed_probabilities()
    ids = [f'v{k}' for k in range(10)]
    logits = str(tmp_path / 'logits.npz')
    save_scores(logits, np.log(probabilities) + 3.0, labels, ids,
                softmax=False)
    result = calibration.main([logits])
    assert result['ece'] == pytest.approx(HAND_ECE, abs=1e-6) and result['videos'] == 10
    written = json.loads(open(result['json']).read())
    assert written['ece'] == pytest.approx(HAND_ECE, abs=1e-6) and written['num_bins'] == 15
    assert 'softmax of' in written['confidence']
    with open(result['png'], 'rb') as f:
        assert f.read(8) == b'\x89PNG\r\n\x1a\n'
    assert result['png'] == str(tmp_path / 'logits_analysis' / 'reliability.png')
    # test.py --softmax files hold the probabilities; an unlabelled video is left out
    soft = str(tmp_path / 'soft.npz')
    save_scores(soft, np.vstack([probabilities, [[0.97, 0.01, 0.01, 0.01]]]),
                list(labels) + [-1], ids + ['unknown'], softmax=True)
    assert write_calibration(soft, np.vstack([probabilities, [[0.97, 0.01, 0.01, 0.01]]]),
                             np.append(labels, -1), True)['ece'] == pytest.approx(HAND_ECE)
    assert calibration.main([soft])['ece'] == pytest.approx(HAND_ECE, abs=1e-6)
    # logits taken for probabilities: refused in one line
    release = str(tmp_path / 'release.npz')
    np.savez(release, scores=np.log(probabilities)[:, None], labels=labels)
    assert calibration.main([release])['ece'] == pytest.approx(HAND_ECE, abs=1e-6)
    capsys.readouterr()
    with pytest.raises(SystemExit):
        calibration.main([release, '--probabilities'])
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and 'not (row sums' in err and release in err


def write_run(folder, temporal_type, val_lines):
    """A run folder of main.py: log/log.txt with its validation lines, log/args.json."""
    (folder / 'log').mkdir(parents=True)
    lines = ['2026-01-01 00:00:00 synthetic: 8 classes; TSM resnet10, 8 segments, 64px']
    best = 0.0
    for epoch, prec1 in val_lines:
        best = max(best, prec1)
        lines += [f'2026-01-01 00:00:0{epoch} Epoch {epoch} train: Loss 1.0 Prec@1 50.000',
                  f'2026-01-01 00:00:0{epoch} Epoch {epoch} val: Loss 1.00000 Prec@1 '
                  f'{prec1:.3f} Prec@5 100.000 (best Prec@1 {best:.3f})']
    (folder / 'log' / 'log.txt').write_text('\n'.join(lines) + '\n')
    (folder / 'log' / 'args.json').write_text(json.dumps({'type': temporal_type}))
    return str(folder)


def test_summary_of_run_folders_and_score_files(tmp_path, capsys):
    from tools import summarize_runs
    runs = [write_run(tmp_path / 'seed0', 'TSM', [(0, 40.0), (4, 70.0), (9, 68.0)]),
            write_run(tmp_path / 'seed1', 'TSM', [(4, 60.0), (9, 74.0)]),
            write_run(tmp_path / 'seed2', 'TSM', [(9, 80.0)])]
    groups = summarize_runs.main(runs)
    last, best = groups['all']['last_val'], groups['all']['best_val']
    assert last['n'] == 3 and last['mean'] == pytest.approx((68 + 74 + 80) / 3)
    assert last['std'] == pytest.approx(6.0) and last['spread'] == 12.0  # 68, 74, 80
    assert (best['min'], best['max'], best['mean']) == (70.0, 80.0, pytest.approx(224 / 3))
    assert '| all | last_val | 3 | 74.00 ± 6.00 | 68.00 | 80.00 | 12.00 |' in \
        capsys.readouterr().out
    # score files: top-1 of each (2 of 4 and 4 of 4 right), grouped by type with --by_type
    labels = [0, 1, 2, 3]
    half = str(tmp_path / 'synthetic_TSN_resnet10_8f_1crop_1clip_64px.npz')
    save_scores(half, np.eye(4)[[0, 1, 3, 2]], labels, list('abcd'))
    full = str(tmp_path / 'full.npz')
    save_scores(full, np.eye(4)[labels], labels, list('abcd'), temporal_type='TSN')
    out = tmp_path / 'out' / 'seeds.json'
    groups = summarize_runs.main(runs[:2] + [half, full, '--by_type', '--json', str(out)])
    assert sorted(groups) == ['TSM', 'TSN'] and groups['TSM']['last_val']['n'] == 2
    top1 = groups['TSN']['top1']
    assert (top1['n'], top1['mean'], top1['std']) == (2, 75.0, pytest.approx(2 ** 0.5 * 25))
    assert json.loads(out.read_text())['TSN']['top1']['spread'] == 50.0
    single = summarize_runs.main([full])['all']['top1']
    assert single['std'] is None and summarize_runs.mean_std(single) == '100.0'


def test_summary_refuses_what_it_cannot_read_in_one_line(tmp_path, capsys):
    from tools import summarize_runs
    empty = write_run(tmp_path / 'fresh', 'TSM', [])
    for path, problem in ((empty, 'no validation line'), (str(tmp_path), 'neither a score file')):
        with pytest.raises(SystemExit):
            summarize_runs.main([path])
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and problem in err and path in err, err


@pytest.mark.slow
def test_summary_reads_the_log_main_py_writes(tiny_data_root, tmp_path):
    """The validation lines of a real run (2 epochs), against its TensorBoard scalars."""
    import main as train_main
    from ops.logs import read_scalars
    from tools import summarize_runs
    out = str(tmp_path)
    best = train_main.main(['--dataset', 'synthetic', '--dataset_path', tiny_data_root, '--arch',
                            'resnet10', '--num_segments', '4', '--input_size', '32', '--pretrain',
                            'none', '-b', '8', '-j', '0', '--lr', '0.01', '--epochs', '2',
                            '--root_log', out, '--root_checkpoint', out, '--store_name', 'run'])
    folder = str(tmp_path / 'synthetic' / 'MASNet' / 'resnet10' / 'num_segments_4' / 'run')
    temporal_type, metrics = summarize_runs.run_folder_metrics(folder)
    validation = read_scalars(f'{folder}/tensorboardX')['acc/test_top1']
    assert temporal_type == 'MASNet' and metrics['epoch'] == 1
    assert metrics['best_val'] == pytest.approx(best, abs=1e-3)
    assert metrics['last_val'] == pytest.approx(validation[-1][1], abs=1e-3)
