"""Trust boundaries (issue 19): no code runs from a checkpoint, no NaN reaches a result, every
flag in its domain, corrupt JPEG frames replaced by the nearest good frame."""
import argparse
import datetime
import errno
import logging
import os

import cv2
import numpy as np
import pytest
import torch

import CAM
import main as train_main
import opts
import predict as predict_main
import test as test_main
from ops import checkpoint as C
from ops import dataset as D
from ops import run_eval
from ops.errors import UserError
from ops.models import TemporalModel, model_from_checkpoint
from ops.recognizer import Recognizer
from ops.synthetic import SYNTHETIC_CLASSES
from ops.video_readers import decode_image_file
from tests.conftest import ROOT
from tools.export import main as export_main

T, SIZE, NUM_CLASS = 4, 32, len(SYNTHETIC_CLASSES)


class Payload:
    """Unpickling this runs `touch marker` through os.system, as a hostile checkpoint would."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f'touch {self.marker}',)


def tiny_state():
    torch.manual_seed(0)
    return TemporalModel(NUM_CLASS, T, 'MASNet', 'resnet10', input_size=SIZE).state_dict()


def save(path, state_dict, **extra):
    torch.save({'epoch': 1, 'arch': 'resnet10', 'type': 'MASNet', 'num_segments': T,
                'input_size': SIZE, 'best_prec1': 0.0, 'state_dict': state_dict, **extra},
               str(path))
    return str(path)


def train_args(data_root, out, *extra):
    return ['--dataset', 'synthetic', '--dataset_path', data_root, '--arch', 'resnet10',
            '--num_segments', str(T), '--input_size', str(SIZE), '--pretrain', 'none', '-b', '8',
            '-j', '0', '--epochs', '2', '--root_log', out, '--root_checkpoint', out,
            '--store_name', 'run', *extra]


def entry_points(root):
    """{name: call(weights, tmp_path)} of every command that loads a checkpoint."""
    common = ['--dataset', 'synthetic', '--dataset_path', root]
    video = os.path.join(root, 'synthetic', 'frames', 'valid_3_0000')
    return {
        'test.py': lambda w, tmp: test_main.main(
            common + ['--weights', w, '-j', '0', '--save_scores', str(tmp / 'scores')]),
        'predict.py': lambda w, tmp: predict_main.main(
            [video, '--weights', w, '-j', '0', '--json', str(tmp / 'p.json')] + common),
        'CAM.py': lambda w, tmp: CAM.main(
            common + ['--weights', w, '--video', video, '--output', str(tmp / 'cam.png')]),
        'tools/export.py': lambda w, tmp: export_main(
            common + ['--weights', w, '--video', video, '--output', str(tmp / 'model')]),
        'main.py --resume': lambda w, tmp: train_main.main(
            train_args(root, str(tmp / 'exp'), '--resume', w)),
        'main.py --tune_from': lambda w, tmp: train_main.main(
            train_args(root, str(tmp / 'exp'), '--tune_from', w)),
        'main.py --pretrain': lambda w, tmp: train_main.main(
            train_args(root, str(tmp / 'exp'), '--pretrain', w)),
    }


ENTRY_POINTS = list(entry_points('')) + ['torch.hub.load', 'Recognizer.from_checkpoint']


def refusal(entry, root, weights, tmp_path, capsys, monkeypatch):
    """The one-line error (its text) with which `entry` refuses `weights`."""
    if entry == 'torch.hub.load':
        monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
        with pytest.raises(C.CheckpointError) as err:
            torch.hub.load(ROOT, 'temporal_model', source='local', arch='resnet10',
                           weights=weights, num_classes=NUM_CLASS, num_segments=T,
                           input_size=SIZE)
        return str(err.value)
    if entry == 'Recognizer.from_checkpoint':
        with pytest.raises(C.CheckpointError) as err:
            Recognizer.from_checkpoint(weights, list(SYNTHETIC_CLASSES))
        return str(err.value)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        entry_points(root)[entry](weights, tmp_path)
    assert exit_.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if ': error: ' in line]
    assert len(errors) == 1
    return errors[0]


@pytest.mark.parametrize('entry', ENTRY_POINTS)
def test_a_payload_checkpoint_runs_nothing_anywhere(entry, tiny_data_root, tmp_path, capsys,
                                                    monkeypatch):
    marker = tmp_path / 'pwned'
    weights = save(tmp_path / 'payload.pth.tar', tiny_state(), note=Payload(marker))
    message = refusal(entry, tiny_data_root, weights, tmp_path, capsys, monkeypatch)
    assert not marker.exists()
    assert weights in message and "'posix.system'" in message and '--trust_checkpoint' in message
    if entry.startswith('main.py'):  # refused before the run folder is made
        assert not (tmp_path / 'exp').exists()


@pytest.mark.parametrize('entry', ENTRY_POINTS)
def test_non_finite_weights_are_refused_anywhere(entry, tiny_data_root, tmp_path, capsys,
                                                 monkeypatch):
    state = tiny_state()
    name = 'base_model.layer1.0.bn1.running_var'  # a buffer, kept by --pretrain too
    state[name][3] = float('nan')
    weights = save(tmp_path / 'nan.pth.tar', state)
    message = refusal(entry, tiny_data_root, weights, tmp_path, capsys, monkeypatch)
    assert weights in message and 'non-finite' in message and name in message
    assert '--lr' not in message
    assert not (tmp_path / 'scores').exists() and not (tmp_path / 'p.json').exists()
    assert not (tmp_path / 'exp').exists()  # main.py: refused before the run folder is made


def test_a_trusted_legacy_file_loads_with_the_flag_only(tiny_data_root, tmp_path, capsys):
    # a datetime is harmless but outside the allow-list: what an unknown legacy file may hold
    weights = save(tmp_path / 'legacy.pth.tar', tiny_state(), saved=datetime.datetime(2021, 5, 1))
    common = ['--dataset', 'synthetic', '--dataset_path', tiny_data_root, '--weights', weights,
              '-j', '0', '--save_scores', '', '--max_videos', '2']
    with pytest.raises(SystemExit):
        test_main.main(common)
    assert "'datetime.datetime'" in capsys.readouterr().err
    top1, _, _ = test_main.main(common + ['--trust_checkpoint'])
    assert 0 <= top1 <= 100
    assert f"--trust_checkpoint: unpickling '{weights}' in full" in capsys.readouterr().out
    with pytest.raises(C.CheckpointError, match='datetime'):
        C.load_model_weights(TemporalModel(NUM_CLASS, T, 'MASNet', 'resnet10', input_size=SIZE),
                             weights)
    assert Recognizer.from_checkpoint(weights, list(SYNTHETIC_CLASSES),
                                      trust_checkpoint=True).num_segments == T


def test_the_release_layout_loads_without_the_flag(tmp_path):
    """The release's torch.save (legacy format, DataParallel keys, float prec1/best_prec1) and
    TSM-era extras (numpy best_prec1, argparse.Namespace args) need no --trust_checkpoint."""
    state = tiny_state()
    path = str(tmp_path / 'release.pth.tar')
    torch.save({'epoch': 70, 'arch': 'resnet10', 'prec1': 49.2, 'best_prec1': np.float64(49.2),
                'args': argparse.Namespace(lr=0.01, lr_steps=[30, 40]),
                'state_dict': {'module.' + k: v for k, v in state.items()}}, path,
               _use_new_zipfile_serialization=False)
    # numpy 1.x names the scalar's constructor numpy.core.*, numpy 2.x numpy._core.*
    pickled = open(path, 'rb').read()
    assert pickled.count(b'multiarray\nscalar') == 1
    open(path, 'wb').write(pickled.replace(b'numpy._core.multiarray\nscalar',
                                           b'numpy.core.multiarray\nscalar'))
    data = C.read_checkpoint(path)
    assert data['best_prec1'] == 49.2 and data['args'] == {'lr': 0.01, 'lr_steps': [30, 40]}
    model = model_from_checkpoint(data, path, NUM_CLASS, T, input_size=SIZE)
    for key, value in state.items():
        assert torch.equal(model.state_dict()[key], value), key


def test_nan_momentum_is_refused_before_the_best_file_is_touched(tiny_data_root, tmp_path,
                                                                  capsys):
    out = str(tmp_path / 'exp')
    ckpt_dir = os.path.join(out, 'synthetic', 'MASNet', 'resnet10', f'num_segments_{T}', 'run',
                            'checkpoint')
    os.makedirs(ckpt_dir)
    torch.manual_seed(0)
    model = TemporalModel(NUM_CLASS, T, 'MASNet', 'resnet10', input_size=SIZE)
    optimizer = torch.optim.SGD(model.get_optim_policies(), 0.01, momentum=0.9)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()  # creates the momentum buffers
    next(iter(optimizer.state.values()))['momentum_buffer'][0] = float('nan')
    settings = {'type': 'MASNet', 'arch': 'resnet10', 'num_segments': T, 'input_size': SIZE}
    # the latest records itself as the best, so a resume would copy it to the best file
    latest = os.path.join(ckpt_dir, 'ckpt.pth.tar')
    C.save_checkpoint(C.training_checkpoint(1, model, optimizer, settings, prec1=12.5,
                                            best_prec1=12.5), latest)
    with pytest.raises(SystemExit):
        train_main.main(train_args(tiny_data_root, out))
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert latest in error and 'optimizer.state.0.momentum_buffer' in error
    assert os.listdir(ckpt_dir) == ['ckpt.pth.tar']


@pytest.mark.slow
def test_overflowing_logits_give_one_line_and_no_result(tiny_data_root, tmp_path, capsys):
    state = tiny_state()
    state['new_fc.weight'].fill_(3e38)  # finite weights, logits beyond float32
    weights = save(tmp_path / 'big.pth.tar', state)
    scores = tmp_path / 'scores'
    with pytest.raises(SystemExit):
        test_main.main(['--dataset', 'synthetic', '--dataset_path', tiny_data_root, '--weights',
                        weights, '-j', '0', '--save_scores', str(scores), '--max_videos', '3'])
    err = capsys.readouterr().err
    assert 'non-finite scores for 3 of 3 video(s)' in err and weights in err
    assert 'Prec@1' not in err and not list(scores.glob('*.npz'))  # (the lock file may stay)
    video = os.path.join(tiny_data_root, 'synthetic', 'frames', 'valid_3_0000')
    with pytest.raises(SystemExit):
        predict_main.main([video, '--weights', weights, '--dataset', 'synthetic',
                           '--dataset_path', tiny_data_root, '--json', str(tmp_path / 'p.json')])
    err = capsys.readouterr().err
    assert 'non-finite scores for 1 of 1 video(s)' in err and 'nan%' not in err
    assert not (tmp_path / 'p.json').exists()


MAIN_FLAGS = [('--lr', '-0.01'), ('--lr', '0'), ('--lr', 'nan'), ('--momentum', '-1'),
              ('--momentum', '1'), ('--dropout', '1.5'), ('--dropout', '-0.1'),
              ('--weight_decay', '-1'), ('--clip-gradient', '-5'), ('--warmup', '-1'),
              ('--lr_steps', '-3'), ('--seed', '-1'), ('--epochs', '0'), ('--gpus', '-1'),
              ('--store_name', '/tmp/abs'), ('--store_name', '../../x'), ('--store_name', 'a/b'),
              ('--store_name', '..')]
OTHER_FLAGS = [(predict_main, flag, value) for flag, value in (
    ('--topk', '0'), ('--topk', '-1'), ('--stride', '0'), ('--test_segments', '0'),
    ('--window', '0'), ('--max_frames', '0'))] + [
    (export_main, '--num_segments', '0'), (test_main, '--batch_size', '0'),
    (test_main, '--dense_sample_num', '0'), (CAM, '--label', '-1')]


@pytest.mark.parametrize('flag,value', MAIN_FLAGS)
def test_main_flags_outside_their_domain_stop_before_any_folder(flag, value, tmp_path, capsys):
    out = tmp_path / 'exp'
    # a dataset that is not there: a flag accepted by mistake still ends the run at once
    with pytest.raises(SystemExit) as exit_:
        train_main.main(train_args(str(tmp_path / 'none'), str(out), '--dataset', 'somethingv1',
                                   flag, value))
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f'argument {flag}' in err and value in err
    assert not out.exists()


@pytest.mark.parametrize('module,flag,value', OTHER_FLAGS)
def test_other_flags_outside_their_domain(module, flag, value, capsys):
    argv = {predict_main: ['x', '--weights', 'w'], test_main: ['--weights', 'w'],
            CAM: [], export_main: ['--weights', 'w', '--video', 'v']}[module]
    with pytest.raises(SystemExit) as exit_:
        (module if callable(module) else module.main)(argv + [flag, value])
    assert exit_.value.code == 2
    assert f'argument {flag}' in capsys.readouterr().err


def test_domain_edges_that_are_allowed():
    args = opts.parse_args(['--clip-gradient', '0', '--momentum', '0', '--dropout', '0',
                            '--weight_decay', '0', '--lr', '1e-6', '--store_name', 'my_run.2'])
    assert (args.clip_gradient, args.momentum, args.dropout, args.weight_decay, args.lr,
            args.store_name) == (0, 0, 0, 0, 1e-6, 'my_run.2')
    assert opts.parse_args([]).clip_gradient == 20  # the release's default


def corrupt_jpeg(path):
    """Zero 4 bytes early in the entropy-coded data of a JPEG: OpenCV still returns a picture
    (garbage from there on), libjpeg only prints 'Corrupt JPEG data' on stderr."""
    data = bytearray(open(path, 'rb').read())
    start = data.find(b'\xff\xda') + 20  # just after the start-of-scan header
    data[start:start + 4] = bytes(4)
    open(path, 'wb').write(bytes(data))


def textured_frame(seed):
    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur((rng.random((96, 128, 3)) * 255).astype(np.uint8), (9, 9), 3)


def test_a_corrupt_jpeg_frame_is_replaced_by_its_neighbour(tmp_path, caplog):
    os.makedirs(tmp_path / 'v')
    for i in range(1, 9):
        cv2.imwrite(str(tmp_path / 'v' / f'{i:05d}.jpg'), textured_frame(i))
    corrupt = str(tmp_path / 'v' / '00005.jpg')
    corrupt_jpeg(corrupt)
    assert cv2.imread(corrupt) is not None  # what OpenCV alone accepts as a frame
    assert decode_image_file(corrupt) is None
    assert decode_image_file(str(tmp_path / 'v' / '00004.jpg')) is not None
    (tmp_path / 'list.txt').write_text('v 8 0\n')
    ds = D.TSNDataSet(str(tmp_path), str(tmp_path / 'list.txt'), 8, '{:05d}.jpg', None,
                      random_shift=False)
    with caplog.at_level(logging.WARNING, logger='masnet.data'):
        frames, _ = ds[0]
    neighbours = [cv2.imread(str(tmp_path / 'v' / f'{i:05d}.jpg')) for i in (4, 6)]
    assert any(np.array_equal(frames[4], n) for n in neighbours)
    assert 'unreadable frame' in caplog.text and '00005.jpg' in caplog.text


def test_views_beyond_memory_are_refused_before_evaluating(tiny_data_root, tmp_path, capsys,
                                                         monkeypatch):
    import ops.evaluation as E
    with pytest.raises(UserError, match=r'needs 3\.589e\+04 GiB'):  # the request
        E.check_view_memory(8, 10, 100000, 8, 224, torch.device('cpu'))
    # 8 videos x 10 crops x 20 clips x 4 frames x 3 x 32 x 32 x 4 bytes = 75 MiB > 64 MiB
    monkeypatch.setattr(E, 'memory_bytes', lambda device: 64 * 2 ** 20)
    weights = save(tmp_path / 'w.pth.tar', tiny_state())
    evaluated = []
    monkeypatch.setattr(run_eval, 'evaluate_models', lambda *args, **kw: evaluated.append(args))
    with pytest.raises(SystemExit):
        test_main.main(['--dataset', 'synthetic', '--dataset_path', tiny_data_root, '--weights',
                        weights, '-j', '0', '--dense_sample', '--dense_sample_num', '20',
                        '--test_crops', '10', '--save_scores', ''])
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert 'needs 0.07324 GiB, more than the 0.0625 GiB of cpu memory' in error
    assert evaluated == []


@pytest.mark.slow
def test_missing_output_folders_are_made_and_a_folder_is_no_file(tiny_data_root, tmp_path,
                                                                 capsys):
    weights = save(tmp_path / 'w.pth.tar', tiny_state())
    video = os.path.join(tiny_data_root, 'synthetic', 'frames', 'valid_3_0000')
    export_main(['--weights', weights, '--video', video, '--format', 'torchscript',
                 '--dataset', 'synthetic', '--dataset_path', tiny_data_root,
                 '--output', str(tmp_path / 'missing' / 'dir' / 'm')])
    assert os.path.isfile(tmp_path / 'missing' / 'dir' / 'm.pt')
    with pytest.raises(SystemExit):
        test_main.main(['--dataset', 'synthetic', '--dataset_path', tiny_data_root, '--weights',
                        weights, '--csv_file', str(tmp_path), '--save_scores', ''])
    captured = capsys.readouterr()
    assert f"--csv_file '{tmp_path}' is a folder" in captured.err.strip().splitlines()[-1]
    assert 'Prec@1' not in captured.out  # refused before the evaluation


OUTPUTS = {
    'test.py --csv_file': lambda root, w, out: test_main.main(
        ['--dataset', 'synthetic', '--dataset_path', root, '--weights', w, '-j', '0',
         '--max_videos', '2', '--save_scores', '', '--csv_file', out]),
    'CAM.py --output': lambda root, w, out: CAM.main(
        ['--dataset', 'synthetic', '--dataset_path', root, '--weights', w, '--output', out]),
    'tools/export.py --output': lambda root, w, out: export_main(
        ['--weights', w, '--video', os.path.join(root, 'synthetic', 'frames', 'valid_3_0000'),
         '--format', 'torchscript', '--dataset', 'synthetic', '--dataset_path', root,
         '--output', out[:-len('.pt')]]),
}


@pytest.mark.parametrize('entry', list(OUTPUTS))
def test_a_full_disk_names_the_output_and_leaves_no_file(entry, tiny_data_root, tmp_path,
                                                         capsys, monkeypatch):
    weights = save(tmp_path / 'w.pth.tar', tiny_state())
    out = str(tmp_path / 'out' / ('result.pt' if 'export' in entry else 'result.png'))

    def full_disk(fd):
        raise OSError(errno.ENOSPC, 'No space left on device')

    monkeypatch.setattr(os, 'fsync', full_disk)
    with pytest.raises(SystemExit):
        OUTPUTS[entry](tiny_data_root, weights, out)
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"cannot write '{out}': No space left on device" in error
    assert os.listdir(tmp_path / 'out') == []  # neither a 0-byte file nor a temporary one
