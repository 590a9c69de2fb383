"""Reliability: kills inside and between checkpoint writes, NaNs, full disks, concurrent runs,
bad lists, flags and score files. The kill trials are two of tools/fault_injection.py's
(its full run, with Ctrl-C and random-time kills, is reported in docs/reliability.md)."""
import errno
import os
import random
import re
import stat
import subprocess
import sys

import numpy as np
import pytest
import torch

import average_scores
import test as test_main
from ops import files
from ops.checkpoint import read_checkpoint, save_checkpoint
from ops.dataset import DataError, TSNDataSet, VideoRecord, load_checked_list, parse_list_file
from ops.run_folder import RunLockedError, lock_run_folder
from ops.run_train import best_on_disk
from ops.scores import ScoreFileError, check_score_file_free, save_scores
from tests.conftest import ROOT
from tools import fault_injection as F


@pytest.fixture(scope='module')
def reference(tiny_data_root, tmp_path_factory):
    out = str(tmp_path_factory.mktemp('reference'))
    return out, F.reference_run(tiny_data_root, out, epochs=2)


@pytest.mark.slow
def test_reported_best_is_what_test_py_gives_on_the_best_checkpoint(tiny_data_root, reference):
    out, ref = reference
    top1, _, _ = test_main.main(['--dataset', 'synthetic', '--dataset_path', tiny_data_root,
                                 '--weights', os.path.join(F.run_dir(out), 'checkpoint', F.BEST),
                                 '-j', '0', '--batch_size', '4', '--save_scores', ''])
    assert ref['reported'] is not None and top1 == pytest.approx(ref['reported'], abs=1e-6)
    assert ref[F.BEST]['prec1'] == ref['reported']
    for name in (F.LATEST, F.BEST):  # readable like the logs (0644 under the usual umask)
        mode = os.stat(os.path.join(F.run_dir(out), 'checkpoint', name)).st_mode
        assert stat.S_IMODE(mode) == files.file_mode()


@pytest.mark.parametrize('name,how', [
    ('kill -9 inside the 1st best write', dict(fault=f'{F.BEST}:1:written:kill')),
    ('kill -9 between the best and the latest write', dict(fault=f'{F.LATEST}:1:open:kill')),
])
@pytest.mark.slow
def test_killed_run_resumes_to_the_uninterrupted_result(tiny_data_root, reference, tmp_path,
                                                        name, how):
    out = str(tmp_path / 'run')
    command = F.train_command(tiny_data_root, out, epochs=2)
    window = F.kill_once(command, out, **how)
    if 'best write' in name:
        assert window == 'inside a best-checkpoint write'
    if 'between' in name:
        assert window == 'between the best and the latest write'
    assert F.check_recovered(command, out, reference[1]) == []


@pytest.mark.slow
def test_sigterm_mid_epoch_saves_and_resumes_to_the_uninterrupted_result(tiny_data_root,
                                                                         reference, tmp_path):
    out = str(tmp_path / 'run')
    command = F.train_command(tiny_data_root, out, 2, '-p', '1')
    status, output = F.signal_at(command, 'Epoch: [1][0/', 'SIGTERM')
    problems, saved_at = F.check_stopped(status, output, 'SIGTERM')
    assert problems == [], output[-2000:]
    # handled at the first iteration boundary after it arrived (1 or 2 unless this test
    # process was starved for an iteration; 3: after the epoch's last one)
    assert saved_at[0] == 1 and saved_at[1] in (1, 2, 3), saved_at
    latest = read_checkpoint(os.path.join(F.run_dir(out), 'checkpoint', F.LATEST))
    assert latest['epoch'] == 1 and latest['progress']['iteration'] == saved_at[1]
    assert latest['progress']['meters'][1] == 8 * saved_at[1]  # clips of the iterations done
    with open(os.path.join(F.run_dir(out), 'log', 'log.txt')) as f:
        assert f'SIGTERM at epoch 1 iteration {saved_at[1]}: saved' in f.read()
    assert F.check_recovered(command, out, reference[1], saved_at) == []


@pytest.mark.slow
def test_sigterm_to_the_process_group_with_loader_workers_resumes_bit_for_bit(tiny_data_root,
                                                                             reference, tmp_path):
    # a cluster signals every process of the job: the loader workers must not die before the
    # main process has written its mid-epoch checkpoint
    out = str(tmp_path / 'run')
    command = F.train_command(tiny_data_root, out, 2, '-p', '1', '-j', '2')
    status, output = F.signal_at(command, 'Epoch: [1][0/', 'SIGTERM', group=True)
    problems, saved_at = F.check_stopped(status, output, 'SIGTERM')
    assert problems == [], output[-2000:]
    assert saved_at[0] == 1 and saved_at[1] in (1, 2, 3), saved_at
    assert 'DataLoader worker' not in output
    latest = read_checkpoint(os.path.join(F.run_dir(out), 'checkpoint', F.LATEST))
    assert latest['epoch'] == 1 and latest['progress']['iteration'] == saved_at[1]
    # the rerun, with workers, ends with the weights of the uninterrupted run without workers
    assert F.check_recovered(command, out, reference[1], saved_at) == []


@pytest.mark.slow
@pytest.mark.distributed
def test_sigterm_to_a_torchrun_group_with_loader_workers_resumes_bit_for_bit(tiny_data_root,
                                                                            tmp_path):
    from tests.test_runtime import common_flags, run, torchrun, weights
    out = str(tmp_path)
    run(torchrun('main.py', *common_flags(tiny_data_root, out, '--store_name', 'whole')))
    command = torchrun('main.py', *common_flags(tiny_data_root, out, '--store_name', 'cut',
                                                '-j', '2'))
    status, output = F.signal_at(command, 'Epoch: [0][0/', 'SIGTERM', group=True)
    assert status == 75 and 'Traceback' not in output, output[-3000:]
    stops = re.findall(r'^SIGTERM at epoch 0 iteration (\d+): saved .*ckpt.pth.tar; rerun the '
                       r'same command to resume$', output, re.M)
    assert len(stops) == 1, output[-3000:]
    assert weights(out, 'cut')['progress']['iteration'] == int(stops[0])
    assert f'at epoch 0 iteration {stops[0]} ' in run(command)
    got, want = weights(out, 'cut'), weights(out, 'whole')
    assert got['epoch'] == want['epoch'] == 1 and 'progress' not in got
    assert all(torch.equal(v, want['state_dict'][k]) for k, v in got['state_dict'].items())


@pytest.mark.slow
def test_save_every_iters_resumes_a_kill_9_mid_epoch(tiny_data_root, reference, tmp_path):
    out = str(tmp_path / 'run')
    command = F.train_command(tiny_data_root, out, 2, '--save_every_iters', '2', '-p', '1')
    # killed as it starts epoch 0's end-of-epoch latest write: the latest on disk is the one
    # written after iteration 2 of epoch 0 (of 3)
    F.kill_once(command, out, fault=f'{F.LATEST}:2:open:kill')
    latest = read_checkpoint(os.path.join(F.run_dir(out), 'checkpoint', F.LATEST))
    assert (latest['epoch'], latest['progress']['iteration']) == (0, 2)
    assert F.check_recovered(command, out, reference[1], (0, 2)) == []


def test_resumed_epochs_draw_the_same_items_with_any_number_of_workers():
    from torch.utils.data import DataLoader

    from ops.preemption import ResumableSampler, SeededItems

    class Draws(torch.utils.data.Dataset):
        def __len__(self):
            return 10

        def __getitem__(self, index):
            return torch.tensor([index, random.random(), np.random.rand()], dtype=torch.float64)

    def batches(workers, skip=0, epoch=1):
        data = SeededItems(Draws(), seed=5)
        sampler = ResumableSampler(data, num_replicas=1, rank=0, shuffle=True, seed=5)
        sampler.set_epoch(epoch, skip)
        data.set_epoch(epoch)
        return torch.cat(list(DataLoader(data, batch_size=2, sampler=sampler,
                                         num_workers=workers)))

    before = random.getstate(), np.random.get_state()
    whole = batches(0)
    assert (random.getstate(), np.random.get_state()[1].tolist()) == \
        (before[0], before[1][1].tolist())  # data loading leaves the global RNGs alone
    assert torch.equal(batches(2), whole)
    assert torch.equal(batches(2, skip=4), whole[4:])  # a resumed epoch: the rest of the order
    other = batches(0, epoch=2)
    assert not torch.equal(other[:, 1:], whole[:, 1:])  # another epoch draws anew
    assert sorted(whole[:, 0].tolist()) == list(range(10))


def test_files_get_the_umask_permissions(tmp_path):
    path = tmp_path / 'f.bin'
    with files.atomic_write(str(path)) as f:
        f.write(b'x')
    plain = tmp_path / 'plain'
    plain.write_bytes(b'x')
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)


def test_disk_full_is_one_error_naming_the_file(tmp_path, monkeypatch):
    path = tmp_path / 'ckpt.pth.tar'
    save_checkpoint({'epoch': 1, 'state_dict': {'w': torch.ones(2)}}, str(path))

    def full(fd):
        raise OSError(errno.ENOSPC, 'No space left on device')
    monkeypatch.setattr(os, 'fsync', full)
    with pytest.raises(files.FileWriteError, match=r"cannot write '.*ckpt.pth.tar': No space left"):
        save_checkpoint({'epoch': 2, 'state_dict': {'w': torch.zeros(2)}}, str(path))
    monkeypatch.undo()
    assert read_checkpoint(str(path))['epoch'] == 1 and os.listdir(tmp_path) == ['ckpt.pth.tar']


def test_stale_temp_files_are_removed(tmp_path):
    (tmp_path / '.tmp_abcckpt.pth.tar').write_bytes(b'partial')
    (tmp_path / 'ckpt.pth.tar').write_bytes(b'keep')
    assert files.remove_stale_temp_files(str(tmp_path)) == ['.tmp_abcckpt.pth.tar']
    assert os.listdir(tmp_path) == ['ckpt.pth.tar']


@pytest.mark.slow
def test_run_lock_refuses_a_second_run_but_not_a_stale_lock(tmp_path):
    held = lock_run_folder(str(tmp_path))
    with pytest.raises(RunLockedError, match=f'pid {os.getpid()}'):
        lock_run_folder(str(tmp_path))
    held.close()  # as the kernel does for a killed process
    lock_run_folder(str(tmp_path)).close()
    # a lock held by another (live) process
    proc = subprocess.Popen([sys.executable, '-c', 'import sys; sys.path.insert(0, sys.argv[1]);'
                             'from ops.run_folder import lock_run_folder as l; h = l(sys.argv[2]);'
                             'print("locked", flush=True); sys.stdin.read()', ROOT, str(tmp_path)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == 'locked'
    with pytest.raises(RunLockedError, match='in use by another run'):
        lock_run_folder(str(tmp_path))
    proc.kill()
    proc.wait()
    lock_run_folder(str(tmp_path)).close()


def _state(epoch, prec1, best, value):
    return {'epoch': epoch, 'prec1': prec1, 'best_prec1': best,
            'state_dict': {'w': torch.full((2,), value)}}


def test_best_checkpoint_is_repaired_or_reported_as_on_disk(tmp_path):
    best = str(tmp_path / 'best')
    # killed between the writes of the old order: the latest is the best model, the best file stale
    save_checkpoint(_state(1, 0.0, 0.0, 1.0), best)
    assert best_on_disk(best, _state(2, 25.0, 25.0, 2.0)) == 25.0
    assert read_checkpoint(best)['epoch'] == 2
    # the best file ahead of the latest (killed after the best write): its own value counts
    save_checkpoint(_state(3, 30.0, 30.0, 3.0), best)
    assert best_on_disk(best, _state(2, 25.0, 25.0, 2.0)) == 30.0
    # a latest recording a best that is nowhere on disk: report what is on disk
    save_checkpoint(_state(1, 10.0, 10.0, 1.0), best)
    assert best_on_disk(best, _state(3, 5.0, 25.0, 2.0)) == 10.0
    os.remove(best)
    assert best_on_disk(best, _state(3, 5.0, 25.0, 2.0)) == 0.0


def train_cli(data_root, out, capsys, *extra):
    """main.py in this process; returns (exit status, stderr)."""
    import main as train_main
    capsys.readouterr()
    try:
        train_main.main(['--dataset', 'synthetic', '--dataset_path', data_root, '--arch',
                         'resnet10', '--num_segments', '4', '--input_size', '32', '--pretrain',
                         'none', '-b', '8', '-j', '0', '--root_log', out, '--root_checkpoint', out,
                         '--store_name', 'run', *extra])
        status = 0
    except SystemExit as exc:
        status = exc.code
    return status, capsys.readouterr().err


def one_line_error(res, *words):
    status, err = res
    lines = [ln for ln in err.splitlines() if 'error' in ln]
    assert status == 2 and len(lines) == 1 and 'Traceback' not in err, err
    for word in words:
        assert word in lines[0], lines[0]


@pytest.mark.slow
def test_nan_weights_are_never_saved(tiny_data_root, tmp_path, capsys):
    out = str(tmp_path / 'exp')
    res = train_cli(tiny_data_root, out, capsys, '--lr', '1e6', '--epochs', '2')
    one_line_error(res, 'training diverged at epoch')
    ckpt = os.path.join(out, 'synthetic', 'MASNet', 'resnet10', 'num_segments_4', 'run',
                        'checkpoint')
    for name in os.listdir(ckpt) if os.path.isdir(ckpt) else []:
        data = read_checkpoint(os.path.join(ckpt, name))
        assert all(torch.isfinite(v).all() for v in data['state_dict'].values()
                   if v.is_floating_point()), name


def test_bad_flags_and_inputs_are_one_line(tiny_data_root, tmp_path, capsys):
    out = str(tmp_path / 'exp')
    for flag in ('--num_segments', '--print-freq', '--eval-freq', '--input_size', '--epochs',
                 '--batch-size'):
        res = train_cli(tiny_data_root, out, capsys, flag, '0')
        one_line_error(res, flag, 'must be >= 1')
    res = train_cli(tiny_data_root, out, capsys, '--evaluate')
    one_line_error(res, '--evaluate', 'no checkpoint')
    assert not os.path.exists(out)  # a failed start leaves no run folder


def test_lists_are_checked_before_training(tmp_path, tiny_data_root):
    root = os.path.join(tiny_data_root, 'synthetic', 'frames')
    video = sorted(os.listdir(root))[0]
    bad = tmp_path / 'bad.txt'
    bad.write_text(f'{video} 6 1\n{video} 6 8\n')
    with pytest.raises(DataError, match=r'bad.txt:2: label 8 .* not in \[0, 8\)'):
        load_checked_list(str(bad), root, 8, '{:05d}.jpg')
    bad.write_text(f'{video} 6 1\nabsent 6 1\n')
    with pytest.raises(DataError, match=r"bad.txt:2: '.*absent' does not exist \(1 of 2"):
        load_checked_list(str(bad), root, 8, '{:05d}.jpg')
    assert len(load_checked_list(str(bad), root, 8, '{:05d}.jpg', missing='warn')) == 2
    bad.write_text(f'{video} 6 1\n')
    with pytest.raises(DataError, match="none of the first 1 videos is readable.*'img_{:05d}.jpg'"):
        load_checked_list(str(bad), root, 8, 'img_{:05d}.jpg')
    bad.write_bytes(b'\x89PNG\x00\xff\xfe')
    with pytest.raises(DataError, match='bad.txt:1: not UTF-8 text'):
        parse_list_file(str(bad))


def test_unreadable_training_videos_stop_the_run(tmp_path):
    ds = TSNDataSet(str(tmp_path), None, 4, '{:05d}.jpg', None,
                    video_list=[VideoRecord('absent', 8, 0)])
    with pytest.raises(DataError, match='21 training videos in a row'):
        ds[0]


def test_png_named_jpg_decodes(tmp_path):
    import cv2

    from ops.video_readers import decode_image_file
    img = np.full((8, 8, 3), 200, np.uint8)
    path = str(tmp_path / '00001.jpg')
    cv2.imwrite(str(tmp_path / 'x.png'), img)
    os.rename(str(tmp_path / 'x.png'), path)
    assert np.array_equal(decode_image_file(path), img)


def test_score_files_of_another_checkpoint_are_not_replaced(tmp_path):
    path = str(tmp_path / 's.npz')
    save_scores(path, np.zeros((2, 3)), [0, 1], ['a', 'b'], weights='a.pth.tar', list_file='v.txt')
    check_score_file_free(path, 'a.pth.tar', 'v.txt')  # the same evaluation again
    with pytest.raises(ScoreFileError, match="holds the scores of 'a.pth.tar'.*--overwrite"):
        check_score_file_free(path, 'b.pth.tar', 'v.txt')
    with pytest.raises(ScoreFileError):
        check_score_file_free(path, 'a.pth.tar', 'other.txt')
    check_score_file_free(path, 'b.pth.tar', 'v.txt', overwrite=True)


@pytest.mark.parametrize('content', [b'', b'PK\x03\x04truncated', b'not an npz at all'])
def test_corrupt_score_files_are_one_line(tmp_path, content, capsys):
    path = tmp_path / 'bad.npz'
    path.write_bytes(content)
    with pytest.raises(SystemExit) as exit_info:
        average_scores.main([str(path)])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and 'bad.npz' in err


def test_a_frame_count_beyond_the_folder_is_named(tmp_path, caplog):
    import cv2
    os.makedirs(tmp_path / 'v')
    for i in range(1, 5):
        cv2.imwrite(str(tmp_path / 'v' / f'{i:05d}.jpg'), np.full((8, 8, 3), 10 * i, np.uint8))
    ds = TSNDataSet(str(tmp_path), None, 4, '{:05d}.jpg', None, random_shift=False,
                    video_list=[VideoRecord('v', 8, 0)])
    frames, _ = ds[0]  # frames 2, 4, 6, 8: the last two stand in for by frame 4, the last there
    assert [int(f[0, 0, 0]) for f in frames] == [20, 40, 40, 40]
    assert f"missing frame {tmp_path / 'v' / '00008.jpg'} (frame 8)" in caplog.text
    assert f"frame folder '{tmp_path / 'v'}' is listed with 8 frames" in caplog.text
    assert 'but holds 4: frame 4 stands in' in caplog.text
    assert 'using frame 5' not in caplog.text and 'using frame 4 instead' in caplog.text
