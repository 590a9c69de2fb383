"""tools/compare_scores.py on two constructed score files whose difference is known: the
top-1 difference, McNemar's exact p-value against scipy, the paired bootstrap interval against
a direct recomputation, the classes that gain and lose, and the refusal of other videos."""
import csv
import json

import numpy as np
import pytest
from scipy.stats import binomtest

from ops.scores import save_scores
from tools import compare_scores

CLASSES = ['left', 'right', 'up', 'down']
# per class (10 videos each): videos both right, only A right, only B right, both wrong
OUTCOMES = {0: (4, 6, 0, 0), 1: (5, 4, 0, 1), 2: (6, 2, 0, 2), 3: (5, 0, 3, 2)}


def constructed_pair(folder):
    """Score files A and B of the same 40 videos: A right on 32 (80%), B on 23 (57.5%);
    12 videos only A gets right, 3 only B."""
    labels, right_a, right_b = [], [], []
    for c, counts in OUTCOMES.items():
        for (a, b), count in zip(((1, 1), (1, 0), (0, 1), (0, 0)), counts):
            labels += [c] * count
            right_a += [a] * count
            right_b += [b] * count
    labels = np.array(labels)
    ids = [f'video{k:02d}' for k in range(len(labels))]
    paths = []
    for name, right in (('a.npz', right_a), ('b.npz', right_b)):
        predicted = np.where(right, labels, (labels + 1) % 4)
        scores = np.eye(4, dtype=np.float32)[predicted] + 0.05
        paths.append(str(folder / name))
        save_scores(paths[-1], scores, labels, ids, categories=CLASSES)
    return paths, np.array(right_a, bool), np.array(right_b, bool)


def test_mcnemar_exact_equals_scipy_binomial_test():
    assert compare_scores.mcnemar_exact(12, 3) == pytest.approx(1152 / 32768, abs=1e-15)
    for a_only, b_only in ((12, 3), (3, 12), (0, 9), (7, 7), (40, 61), (1500, 1390)):
        expected = binomtest(min(a_only, b_only), a_only + b_only, 0.5).pvalue
        assert compare_scores.mcnemar_exact(a_only, b_only) == pytest.approx(expected, rel=1e-9)
    assert compare_scores.mcnemar_exact(0, 0) == 1.0


def percentile_interval(values):
    """The 2.5th and 97.5th percentiles by linear interpolation between order statistics."""
    ordered = np.sort(values)
    bounds = []
    for q in (2.5, 97.5):
        position = q / 100 * (len(ordered) - 1)
        low = int(np.floor(position))
        high = min(low + 1, len(ordered) - 1)
        bounds.append(ordered[low] + (position - low) * (ordered[high] - ordered[low]))
    return bounds


def test_comparison_of_a_known_difference(tmp_path, monkeypatch):
    (path_a, path_b), right_a, right_b = constructed_pair(tmp_path)
    monkeypatch.setattr(compare_scores, 'CHUNK_VALUES', 40 * 64)  # several chunks of resamples
    result = compare_scores.main([path_a, path_b, '--bootstrap', '500', '--seed', '3'])
    assert result['n'] == 40 and result['top1_a'] == 80.0 and result['top1_b'] == 57.5
    assert result['difference'] == pytest.approx(22.5)
    assert (result['a_only'], result['b_only']) == (12, 3)
    assert result['mcnemar_p'] == pytest.approx(binomtest(3, 15, 0.5).pvalue, rel=1e-12)
    # the interval: from the same resamples, counted video by video
    resamples = np.concatenate(list(compare_scores.bootstrap_indices(40, 500, 3)))
    assert resamples.shape == (500, 40) and resamples.min() >= 0 and resamples.max() == 39
    differences = [100.0 * (sum(right_a[i] for i in row) - sum(right_b[i] for i in row)) / 40
                   for row in resamples]
    assert result['ci95'] == pytest.approx(percentile_interval(differences), abs=1e-9)
    low, high = result['ci95']
    assert low < 22.5 < high and 25 < high - low < 45  # ~ 2 x 1.96 x its 9.0-point error
    assert compare_scores.main([path_a, path_b, '--bootstrap', '500', '--seed', '3'])['ci95'] \
        == result['ci95']
    # the classes: A gains 6, 4, 2 videos on left, right, up and loses 3 on down
    assert [(r['name'], r['difference'], r['videos']) for r in result['classes_gain']] == \
        [('left', 6, 10), ('right', 4, 10), ('up', 2, 10)]
    assert [(r['name'], r['difference'], r['right_a'], r['right_b'])
            for r in result['classes_loss']] == [('down', -3, 5, 8)]
    reverse = compare_scores.main([path_b, path_a, '--bootstrap', '500', '--seed', '3'])
    assert reverse['difference'] == pytest.approx(-22.5)
    assert reverse['mcnemar_p'] == result['mcnemar_p']


def test_json_and_csv_files(tmp_path, capsys):
    (path_a, path_b), right_a, right_b = constructed_pair(tmp_path)
    out_json, out_csv = tmp_path / 'out' / 'cmp.json', tmp_path / 'out' / 'cmp.csv'
    compare_scores.main([path_a, path_b, '--json', str(out_json), '--csv', str(out_csv),
                         '--bootstrap', '200'])
    printed = capsys.readouterr().out
    assert 'A - B: +22.50 points' in printed and 'only A right: 12 videos' in printed
    written = json.loads(out_json.read_text())
    assert {'n', 'top1_a', 'top1_b', 'difference', 'ci95', 'mcnemar_p'} <= set(written)
    assert written['n'] == 40 and len(written['ci95']) == 2 and written['file_a'] == path_a
    rows = list(csv.reader(out_csv.open()))
    assert rows[0] == ['video', 'label', 'prediction_a', 'prediction_b', 'right']
    assert len(rows) == 1 + 15 and sum(r[4] == 'A' for r in rows[1:]) == 12
    first_b = int(np.flatnonzero(right_b & ~right_a)[0])
    assert [f'video{first_b:02d}', 'down', 'left', 'down', 'B'] in rows


def one_line_error(capsys, argv):
    with pytest.raises(SystemExit) as exit_info:
        compare_scores.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_files_of_other_videos_are_refused_in_one_line(tmp_path, capsys):
    (path_a, _), _, _ = constructed_pair(tmp_path)
    other = str(tmp_path / 'other.npz')
    save_scores(other, np.eye(4, dtype=np.float32)[[0, 1]], [0, 1], ['x', 'y'])
    err = one_line_error(capsys, [path_a, other])
    assert 'disagree in shape' in err and path_a in err and other in err
    data = np.load(path_a)
    renamed = str(tmp_path / 'renamed.npz')
    save_scores(renamed, data['scores'][:, 0], data['labels'],
                [f'clip{k}' for k in range(40)])
    err = one_line_error(capsys, [path_a, renamed, '--json', str(tmp_path / 'x.json')])
    assert f"'{path_a}' and '{renamed}' list different videos" in err
    assert not (tmp_path / 'x.json').exists()
