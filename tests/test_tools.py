"""Data preparation tools, the FLOPs counter and the ablation table."""
import csv
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from ops.scores import save_scores
from tests.conftest import ROOT
from tools import ablation_table, extract_frames, flops, gen_label


def write_video(path, count, w=64, h=48):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'MJPG'), 10, (w, h))
    for i in range(count):
        writer.write(np.full((h, w, 3), i * 10, np.uint8))
    writer.release()


def test_extract_frames_parallel_and_resumable(tmp_path):
    videos, frames = tmp_path / 'videos', tmp_path / 'frames'
    os.makedirs(videos)
    write_video(videos / 'a.avi', 5)
    write_video(videos / 'b.avi', 7)
    (videos / 'notes.txt').write_text('not a video')
    counts = extract_frames.extract_folder(str(videos), str(frames), short_side=24, num_workers=2)
    assert counts == {'a.avi': 5, 'b.avi': 7}
    img = cv2.imread(str(frames / 'b' / '00007.jpg'))
    assert img.shape == (24, 32, 3)
    assert os.path.isfile(frames / 'a' / extract_frames.DONE_MARKER)

    # interrupted extraction of b: marker missing, a frame missing -> b redone, a kept
    os.remove(frames / 'b' / extract_frames.DONE_MARKER)
    os.remove(frames / 'b' / '00003.jpg')
    stamp = os.path.getmtime(frames / 'a' / '00001.jpg')
    counts = extract_frames.extract_folder(str(videos), str(frames), short_side=24, num_workers=1)
    assert counts == {'a.avi': 5, 'b.avi': 7}
    assert os.path.isfile(frames / 'b' / '00003.jpg')
    assert os.path.getmtime(frames / 'a' / '00001.jpg') == stamp


def run_tool(script, *args):
    return subprocess.run([sys.executable, os.path.join(ROOT, 'tools', script), *map(str, args)],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_extract_and_check_count_failures_exit_1_and_write_clean_lists(tmp_path):
    videos, frames = tmp_path / 'videos', tmp_path / 'frames'
    os.makedirs(videos / 'cls')
    os.makedirs(videos / 'broken')
    write_video(videos / 'cls' / 'a.avi', 5)
    (videos / 'cls' / 'bad.avi').write_bytes(b'not a video at all' * 100)
    (videos / 'broken' / 'bad2.avi').write_bytes(b'\x00' * 1000)
    res = run_tool('extract_frames.py', videos, frames, '--short_side', 0, '--num_workers', 1,
                   '--write-clean', tmp_path / 'clean.txt')
    assert res.returncode == 1, res.stderr
    assert '1 videos extracted' in res.stdout and '5 frames; 2 failed' in res.stdout
    assert 'failed: broken/bad2.avi (no frame decodes)' in res.stderr
    assert 'failed: cls/bad.avi (no frame decodes)' in res.stderr
    assert sorted(os.listdir(frames)) == ['cls']  # no folder left for a failed video
    assert sorted(os.listdir(frames / 'cls')) == ['a']
    assert (tmp_path / 'clean.txt').read_text() == 'cls/a 5 -1\n'

    (tmp_path / 'list.txt').write_text('cls/a.avi 0\ncls/bad.avi 1\n\nbroken/bad2.avi 1\n')
    res = run_tool('check_videos.py', tmp_path / 'list.txt', videos, '--num_workers', 1,
                   '--write-clean', tmp_path / 'clean_videos.txt')
    assert res.returncode == 1 and '3 videos checked: 2 bad' in res.stdout, res.stderr
    assert (tmp_path / 'clean_videos.txt').read_text() == 'cls/a.avi 0\n'
    # nothing failed: exit 0
    os.remove(videos / 'cls' / 'bad.avi')
    os.remove(videos / 'broken' / 'bad2.avi')
    assert run_tool('extract_frames.py', videos, frames, '--num_workers', 1).returncode == 0
    res = run_tool('check_videos.py', tmp_path / 'clean_videos.txt', videos, '--num_workers', 1)
    assert res.returncode == 0 and '1 videos checked: 0 bad' in res.stdout


def make_frame_folders(root, names_and_counts):
    for name, count in names_and_counts:
        os.makedirs(root / name)
        for i in range(1, count + 1):
            (root / name / f'{i:05d}.jpg').write_bytes(b'x')


def test_gen_label_sthv1(tmp_path):
    ann, frames, out = tmp_path / 'ann', tmp_path / 'frames', tmp_path / 'out'
    os.makedirs(ann)
    (ann / 'something-something-v1-labels.csv').write_text(
        'Pushing something from right to left\nHolding something\n'
        'Pushing something from left to right\n')
    (ann / 'something-something-v1-train.csv').write_text(
        '100;Holding something\n101;Pushing something from left to right\n'
        '102;Holding something\n')
    (ann / 'something-something-v1-validation.csv').write_text(
        '200;Pushing something from right to left\n')
    make_frame_folders(frames, [('100', 3), ('101', 5), ('200', 2)])
    gen_label.main(['sthv1', str(ann), str(frames), str(out)])
    assert (out / 'category.txt').read_text().splitlines() == [
        'Holding something', 'Pushing something from left to right',
        'Pushing something from right to left']
    # 102 has no frames
    assert (out / 'train.txt').read_text().splitlines() == ['100 3 0', '101 5 1']
    assert (out / 'valid.txt').read_text().splitlines() == ['200 2 2']


def test_gen_label_sthv2(tmp_path):
    ann, frames, out = tmp_path / 'ann', tmp_path / 'frames', tmp_path / 'out'
    os.makedirs(ann)
    (ann / 'labels.json').write_text(json.dumps({'Putting something on something': '1',
                                                 'Approaching something with your camera': '0'}))
    (ann / 'train.json').write_text(json.dumps([
        {'id': '7', 'label': 'putting a cup on a table',
         'template': 'Putting [something] on [something]'}]))
    (ann / 'validation.json').write_text(json.dumps([
        {'id': '8', 'label': 'approaching a tree',
         'template': 'Approaching [something] with your camera'}]))
    make_frame_folders(frames, [('7', 4), ('8', 6)])
    gen_label.main(['sthv2', str(ann), str(frames), str(out)])
    first_category = (out / 'category.txt').read_text().splitlines()[0]
    assert first_category == 'Approaching something with your camera'
    assert (out / 'train.txt').read_text() == '7 4 1\n'
    assert (out / 'valid.txt').read_text() == '8 6 0\n'


def test_gen_label_kinetics(tmp_path):
    ann, frames, out = tmp_path / 'ann', tmp_path / 'frames', tmp_path / 'out'
    os.makedirs(ann)
    for name, rows in (('train.csv', [('riding a bike', 'abc', 10, 20),
                                      ('abseiling', 'xyz', 0, 10)]),
                       ('validate.csv', [('riding a bike', 'qqq', 5, 15)])):
        with open(ann / name, 'w', newline='') as f:
            writer = csv.writer(f)
            writer.writerow(['label', 'youtube_id', 'time_start', 'time_end', 'split'])
            for label, yid, start, end in rows:
                writer.writerow([label, yid, start, end, name[:-4]])
    make_frame_folders(frames, [('abc_000010_000020', 9), ('xyz_000000_000010', 3),
                                ('qqq_000005_000015', 4)])
    gen_label.main(['kinetics', str(ann), str(frames), str(out)])
    assert (out / 'category.txt').read_text().splitlines() == ['abseiling', 'riding a bike']
    assert (out / 'train_videofolder.txt').read_text().splitlines() == [
        'abc_000010_000020 9 1', 'xyz_000000_000010 3 0']
    assert (out / 'val_videofolder.txt').read_text() == 'qqq_000005_000015 4 1\n'


@pytest.mark.slow
def test_flops_of_the_paper_model():
    """MAS-ResNet50, 224 px, 174 classes: 26.07 M parameters, 33.55 / 66.55 GFLOPs at 8 / 16
    frames (the specification's 33.5 / 66.6, the paper's 34 / 67)."""
    params, gflops = flops.count('MASNet', 'resnet50', 8, 224, 174)
    assert round(params / 1e6, 2) == 26.07
    assert gflops == pytest.approx(33.55, abs=0.01)
    assert flops.count('MASNet', 'resnet50', 16, 224, 174)[1] == pytest.approx(66.55, abs=0.01)


@pytest.mark.slow
def test_flops_count_tim_as_a_depthwise_temporal_conv():
    """TIM's handler adds 3 multiply-adds per output element of every TIM the model runs (the
    readable form calls the TIM modules; the fast form, counted by the registry's handlers on
    the blocks, does not)."""
    from ops.MASNet import TIM, set_form
    from ops.models import TemporalModel
    model = TemporalModel(5, 4, 'MASNet', 'resnet10', input_size=64).eval()
    clip = torch.zeros(1, 12, 64, 64)
    added = flops.uncounted_macs(set_form('readable', model), clip,
                                 {TIM: lambda m, shape: 3 * np.prod(shape)})
    # resnet10 at 64 px: one block per stage, 4 frames of 64/128/256/512 channels at 16/8/4/2 px
    assert added == 3 * 4 * (64 * 16 * 16 + 128 * 8 * 8 + 256 * 4 * 4 + 512 * 2 * 2)
    from ops.temporal import TEMPORAL_MODULES
    handlers = TEMPORAL_MODULES['MASNet'].uncounted_macs
    assert flops.uncounted_macs(set_form('fast', model), clip, handlers) == added


@pytest.mark.slow
def test_flops_scale_with_segments_and_type():
    _, tsn = flops.count('TSN', 'resnet18', 1, 224, 1000)
    assert tsn == pytest.approx(1.82, abs=0.01)  # torchvision ResNet-18's 1.82 GMACs
    _, tsn2 = flops.count('TSN', 'resnet18', 2, 224, 1000)
    assert tsn2 == pytest.approx(2 * tsn, rel=1e-3)  # per-frame cost: linear in segments


def test_ablation_table_averages_seeds_and_scores_pairs(tmp_path):
    """Pair accuracy and mean +- sample std over seeds, checked on hand-made score files."""
    labels = list(range(8))  # one video per class; classes 2k, 2k+1 are time-reversed twins

    def score_file(name, predictions):
        path = str(tmp_path / name)
        save_scores(path, np.eye(8)[predictions], labels, [f'v{i}' for i in labels])
        return path

    files = [score_file('synthetic_MASNet_resnet10_8f_1crop_1clip_64px.npz', labels),
             score_file('synthetic_TSN_a.npz', [0, 1, 2, 3, 5, 4, 7, 6]),  # last two pairs swapped
             score_file('synthetic_TSN_b.npz', labels)]
    rows = ablation_table.table(files).splitlines()
    assert rows[2] == ('| TSN | 2 | 75.0 ± 35.4 | 100.0 ± 0.0 | 100.0 ± 0.0 | 50.0 ± 70.7 | '
                       '50.0 ± 70.7 |')
    assert rows[3] == '| MASNet | 1 | ' + ' | '.join(['100.0'] * 5) + ' |'  # no std of 1 run


@pytest.mark.slow
def test_gpu_check_says_so_in_one_line_without_a_gpu(tmp_path):
    import subprocess
    import sys

    from tests.conftest import ROOT
    # GPUs hidden, so that the check sees none on a GPU machine too
    out = subprocess.run([sys.executable, 'tools/gpu_check.py', '--out', str(tmp_path / 'r.json')],
                         cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, 'CUDA_VISIBLE_DEVICES': ''})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines() == [
        'gpu_check: no CUDA GPU on this machine: nothing to check']
    assert not (tmp_path / 'r.json').exists()


def test_bench_model_ratios_are_medians_of_per_round_ratios():
    from tools.bench_model import summarize
    # one slow MAS round (a load spike): the ratio of the medians would be 1.5
    times = {'plain': [1.0, 2.0, 3.0], 'masnet': [3.0, 2.2, 3.3]}
    medians, ratios, spread = summarize(times)
    assert medians == {'plain': 2.0, 'masnet': 3.0}
    assert ratios['masnet'] == pytest.approx(1.1) and ratios['plain'] == 1.0
    assert spread['masnet'] == pytest.approx((1.1, 3.0))


@pytest.mark.slow
def test_bench_model_small_run(tmp_path):
    """One tiny round of every part: eager times, peak memory (in subprocesses) and the
    profile of MAS-Net's extra operators."""
    from tools import bench_model
    out = tmp_path / 'bench.json'
    bench_model.main(['--size', '64', '--num_segments', '2', '--repeats', '1', '--modes', 'eager',
                      '--profile', '--json', str(out)])
    results = json.loads(out.read_text())
    for key in ('inference', 'train'):
        assert set(results['eager'][key]) == set(bench_model.NETWORKS)
        assert results['eager'][key]['plain']['ratio'] == 1.0
        assert results['eager'][key]['masnet']['ms'] > 0
    assert all(m > 0 for m in results['train_peak_memory_mib'].values())
    extra = {op: mas - plain for op, plain, mas in results['extra_time_profile']['train']}
    assert extra.get('aten::bmm', 0) > 0  # MAM's matmuls: the plain network has none
