"""Calibration (ops/analysis.py's ECE and reliability diagram, tools/calibration.py) and the
summary of several runs of one recipe (tools/summarize_runs.py) on constructed inputs whose
values are known by hand."""
import json

import numpy as np
import pytest

from ops.analysis import calibration_bins, expected_calibration_error, write_calibration
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
