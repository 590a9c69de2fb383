"""The release's recipe by default: the trained network, sampling, scores, schedules, recipes.

The references here are written from the release's code (read, not imported): its
TemporalModel never enables partial BN, its test-time dense sampling uses integer clip
starts, its --softmax is taken after averaging the views, its MAS_lr falls back to step_lr.
"""
import logging
import math
import os
import shlex
import subprocess

import numpy as np
import pytest
import torch
import torch.nn as nn

import average_scores
import test as test_main
from ops.checkpoint import read_checkpoint
from ops.dataset import parse_list_file, sample_dense_test_indices
from ops.dataset_config import get_dataset_config
from ops.evaluation import evaluate_models
from ops.models import TemporalModel, model_from_checkpoint
from ops.optim import apply_lr, lr_at_epoch, optim_policies
from ops.run_train import TrainingData, build_loaders, build_model
from ops.runtime import Runtime, setup_runtime
from opts import parse_args
from tests.conftest import ROOT
from tools import release_formulation as reference

SEED_TRAIN_FLAGS = shlex.split(
    '--lr 0.01 --epochs 70 --dataset_path ../../datasets/ --dataset somethingv1 '
    '--arch resnet50 --num_segments 8 --store_name MAS_Net[v1_8] '
    '--gpus 0 1 2 3 --workers 8 --batch-size 32 --dropout 0.5 --weight_decay 5e-4 '
    '--lr_type MAS_lr --lr_steps 30 40 50 60')


def _torchvision_style_resnet50(seed=0):
    """A state dict in torchvision's resnet50 layout (no conv biases), random values."""
    plain = TemporalModel(1000, 1, 'TSN', 'resnet50', dropout=0).base_model
    convs = {name for name, m in plain.named_modules() if isinstance(m, nn.Conv2d)}
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, v in plain.state_dict().items():
        module, _, leaf = k.rpartition('.')
        if module in convs and leaf == 'bias':
            continue
        if k.endswith('running_var'):
            sd[k] = torch.rand(v.shape, generator=g) + 0.5
        elif v.is_floating_point():
            sd[k] = torch.randn(v.shape, generator=g) * 0.05
        else:
            sd[k] = v
    sd['fc.weight'] = torch.randn(1000, 2048, generator=g)
    sd['fc.bias'] = torch.zeros(1000)
    return sd


def _release_training_network(model, imagenet):
    """The release's network for the seed command, in training mode.

    Built as the release builds it: ImageNet weights loaded with a plain non-strict
    load_state_dict, conv biases at PyTorch's default (uniform) initialisation, every
    BatchNorm training and every parameter trainable. The remaining random
    initialisations (MAM, MSM, new_fc) are taken from `model` so the two can be compared.
    """
    release = TemporalModel(174, 8, 'MASNet', 'resnet50', dropout=0.5)
    missing, _ = release.base_model.load_state_dict(imagenet, strict=False)
    own = model.state_dict()
    with torch.no_grad():
        for name, tensor in release.state_dict().items():
            if name.startswith('new_fc.') or name[len('base_model.'):] in missing:
                tensor.copy_(own[name])
        for m in release.modules():
            if isinstance(m, nn.Conv2d) and m.bias is not None:
                bound = 1 / np.sqrt(m.weight[0].numel())
                m.bias.uniform_(-bound, bound)
    release.train()
    for p in release.parameters():
        p.requires_grad_(True)
    return release


@pytest.mark.slow
def test_seed_training_command_trains_the_release_network(tmp_path, monkeypatch):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path))
    imagenet = _torchvision_style_resnet50()
    os.makedirs(tmp_path / 'hub' / 'checkpoints')
    torch.save(imagenet, tmp_path / 'hub' / 'checkpoints' / 'resnet50-0676ba61.pth')

    torch.manual_seed(0)
    model = build_model(parse_args(SEED_TRAIN_FLAGS), num_class=174).double()
    model.train()
    release = _release_training_network(model, imagenet).double()

    own = model.state_dict()
    for k, v in imagenet.items():
        if not k.startswith('fc.'):
            assert torch.equal(own['base_model.' + k].double(), v.double()), k
    norms = [m for m in model.modules() if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d))]
    assert len(norms) == 1 + 16 * 5 + 4  # stem, 16 bottlenecks x (3 + MAM + MSM), 4 downsamples
    assert all(m.training for m in norms)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in release.named_parameters()}

    x = torch.randn(1, 8 * 3, 64, 64, dtype=torch.float64,
                    generator=torch.Generator().manual_seed(1))
    torch.manual_seed(5)  # the same dropout mask for both
    ours = model(x)
    torch.manual_seed(5)
    theirs = reference.ReleaseStyleModel(release)(x)
    assert torch.allclose(ours, theirs, rtol=1e-9, atol=1e-10)
    ours.square().sum().backward()
    theirs.square().sum().backward()
    ours_grads = dict(model.named_parameters())
    for name, p in release.named_parameters():
        if name.endswith('conv_fc1.weight') or name.endswith('MAM.conv1.weight') or 'bn' in name:
            assert torch.allclose(ours_grads[name].grad, p.grad, rtol=1e-7, atol=1e-12), name


@pytest.mark.slow
def test_partial_bn_is_opt_in_and_spares_untrained_norms(tmp_path, monkeypatch):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path))
    sd = _torchvision_style_resnet50()
    os.makedirs(tmp_path / 'hub' / 'checkpoints')
    torch.save(sd, tmp_path / 'hub' / 'checkpoints' / 'resnet50-0676ba61.pth')
    assert parse_args([]).partialbn is False
    assert parse_args(['--npb']).partialbn is False
    args = parse_args(SEED_TRAIN_FLAGS + ['--partialbn'])
    model = build_model(args, 174).train()
    named = dict(model.base_model.named_modules())
    frozen = {n for n, m in named.items()
              if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d)) and not m.training}
    assert 'bn1' not in frozen  # the first BatchNorm trains
    assert {'layer1.0.bn1', 'layer1.0.bn3', 'layer4.2.bn2', 'layer2.0.downsample.1'} <= frozen
    assert not any('MAM' in n or 'MSM' in n for n in frozen)  # ImageNet did not set them
    assert len(frozen) == 16 * 3 + 4
    assert not named['layer1.0.bn2'].weight.requires_grad
    assert named['layer1.0.MAM.bn1'].weight.requires_grad
    assert named['layer1.0.MSM.bn_fc1'].training

    scratch = TemporalModel(5, 4, 'MASNet', 'resnet10', partial_bn=True, input_size=64).train()
    assert scratch.partial_bn_norms() == []  # nothing initialised: nothing frozen
    scratch.init_norms_from(['base_model.layer1.0.bn2.weight', 'base_model.bn1.weight'])
    scratch.train()
    assert scratch.partial_bn_norms() == [scratch.base_model.layer1[0].bn2]
    assert not scratch.base_model.layer1[0].bn2.training
    assert scratch.base_model.bn1.training


def _release_dense_indices(num_frames, T, K):
    # the release: starts = np.linspace(0, tick - 1, K, dtype=int) under numpy < 1.20, whose
    # integer cast truncates toward zero; indices int(i * tick + start) + 1
    tick = num_frames / T
    starts = [int(v) for v in np.linspace(0, tick - 1, num=K)]
    return [int(i * tick + s) + 1 for s in starts for i in range(T)]


def test_dense_test_sampling_equals_the_release():
    assert sample_dense_test_indices(64, 8, 4).tolist() == [
        1, 9, 17, 25, 33, 41, 49, 57, 3, 11, 19, 27, 35, 43, 51, 59,
        5, 13, 21, 29, 37, 45, 53, 61, 8, 16, 24, 32, 40, 48, 56, 64]
    # tick = 3.125: float starts would give 0, 0.7, 1.4, 2.1 and shift the last clips
    assert sample_dense_test_indices(25, 8, 4).tolist()[8:16] == [1, 4, 7, 10, 13, 16, 19, 22]
    assert sample_dense_test_indices(25, 8, 4).tolist()[24:] == [3, 6, 9, 12, 15, 18, 21, 24]
    for n in range(8, 301):
        for T in (8, 16):
            for K in (4, 10):
                assert sample_dense_test_indices(n, T, K).tolist() == \
                    _release_dense_indices(n, T, K), (n, T, K)


def test_dense_test_sampling_of_short_videos_and_the_numpy_version():
    # numpy >= 1.20 floors linspace(..., dtype=int): for tick < 1 (fewer frames than T) the
    # release's later starts become -1, its first index 0; its loader then reads frame 1 there
    def release_numpy_1_20(num_frames, T, K):
        tick = num_frames / T
        starts = np.floor(np.linspace(0, tick - 1, num=K)).astype(int).tolist()
        return [int(i * tick + s) + 1 for s in starts for i in range(T)]

    assert np.linspace(0, -0.375, 10, dtype=int).tolist() == [0] + [-1] * 9  # numpy >= 1.20 here
    assert release_numpy_1_20(5, 8, 10) == [1, 1, 2, 2, 3, 4, 4, 5] + [0, 1, 1, 1, 2, 3, 3, 4] * 9
    for T in (8, 16):
        for K in (2, 4, 10):
            for n in range(1, 3 * T):
                ours = sample_dense_test_indices(n, T, K).tolist()
                assert ours == _release_dense_indices(n, T, K), (n, T, K)  # numpy < 1.20
                # numpy >= 1.20: the same from T frames on, other clips below
                assert (ours == release_numpy_1_20(n, T, K)) == (n >= T), (n, T, K)


def test_training_batches_per_epoch_are_the_releases(tiny_data_root, caplog):
    # the release's training loader has drop_last=True: floor(N / B) batches of B videos
    cfg = get_dataset_config('synthetic', tiny_data_root)
    model = TemporalModel(cfg.num_class, 4, 'MASNet', 'resnet10', input_size=64)
    records = parse_list_file(cfg.train_list)
    runtime = Runtime(torch.device('cpu'))
    for videos, batch in ((24, 5), (24, 8), (10, 3), (7, 7)):
        args = parse_args(['--dataset', 'synthetic', '-b', str(batch), '-j', '0'])
        loader = build_loaders(TrainingData(cfg, records[:videos], records[:2]), model, args,
                               runtime).train
        assert len(loader) == len(list(loader.batch_sampler)) == videos // batch, (videos, batch)
        assert all(len(indices) == batch for indices in loader.batch_sampler)
    # fewer videos than one batch: the release trains on nothing; one partial batch here, said
    args = parse_args(['--dataset', 'synthetic', '-b', '8', '-j', '0'])
    with caplog.at_level(logging.WARNING, logger='masnet'):
        loader = build_loaders(TrainingData(cfg, records[:3], records[:2]), model, args,
                               runtime).train
    assert [len(indices) for indices in loader.batch_sampler] == [3]
    assert '--batch-size 8: the training list holds only 3 videos' in caplog.text


def test_dense_and_twice_sampling_together_are_refused(capsys):
    # the release runs them: dense clips, views reshaped for 2 x 10 clips (scores of C/2 columns)
    with pytest.raises(SystemExit):
        test_main.parse_args(['--weights', 'a.pth.tar', '--dense_sample', '--twice_sample'])
    assert '--dense_sample and --twice_sample exclude each other' in capsys.readouterr().err


class _FixedLogits(nn.Module):
    """Returns per-view logits given by the input's first pixel (view index) from a table."""

    def __init__(self, table):
        super().__init__()
        self.table = torch.as_tensor(table, dtype=torch.float32)
        self.num_class = self.table.shape[1]

    def forward(self, x):
        return self.table[x[:, 0, 0, 0].long()]


def test_softmax_is_taken_of_the_averaged_view_logits():
    table = [[4.0, 0.0, 0.0], [0.0, 0.0, 2.0]]  # two views of one video
    clips = torch.zeros(1, 2 * 3, 2, 2)  # (N, V*T*3, H, W) with T = 1
    clips[0, 3] = 1  # second view
    loader = [(clips, torch.tensor([0]))]

    class Loader(list):
        dataset = [None]

    scores, _ = evaluate_models([_FixedLogits(table)], [Loader(loader)], [1], torch.device('cpu'),
                                use_softmax=True)
    expected = torch.softmax(torch.tensor([2.0, 0.0, 1.0]), dim=0).numpy()
    assert np.allclose(scores[0][0], expected, atol=1e-6)
    mean_of_softmax = torch.softmax(torch.tensor(table), dim=1).mean(0).numpy()
    assert not np.allclose(scores[0][0], mean_of_softmax, atol=1e-3)
    plain, _ = evaluate_models([_FixedLogits(table)], [Loader(loader)], [1], torch.device('cpu'))
    assert np.allclose(plain[0][0], [2.0, 0.0, 1.0])


def test_mas_lr_falls_back_to_step_lr():
    assert [lr_at_epoch('MAS_lr', 0.005, e, [50, 75, 90]) for e in (0, 49, 50, 75, 90)] == \
        pytest.approx([0.005, 0.005, 5e-4, 5e-5, 5e-6])
    assert [lr_at_epoch('MAS_lr', 0.01, e, [30, 40, 50, 60]) for e in (30, 50, 60)] == \
        pytest.approx([1e-3, 5e-5, 1e-5])
    assert parse_args([]).warmup == 0


def _release_adjust_learning_rate(groups, args, epoch):
    """The release's adjust_learning_rate with warm-up (main.py, commit b742cba), on dicts.

    Warm-up replaces the schedule; weight decay is the group's current value times its
    decay_mult (compounded from epoch to epoch).
    """
    if epoch < args.warmup:
        lr = args.lr * (epoch + 1) / args.warmup
    elif args.lr_type == 'step_lr' or (args.lr_type == 'MAS_lr' and len(args.lr_steps) != 4):
        lr = args.lr * 0.1 ** sum(epoch >= s for s in args.lr_steps)
    elif args.lr_type == 'MAS_lr':
        lr = args.lr * 0.1 ** sum(epoch >= s for s in args.lr_steps[:2])
        if epoch >= args.lr_steps[2]:
            lr *= 0.5
            if epoch >= args.lr_steps[3]:
                lr *= 0.2
    else:  # cos_lr
        lr = 0.5 * args.lr * (1 + math.cos(math.pi * epoch / args.epochs))
    for group in groups:
        group['lr'] = lr * group['lr_mult']
        group['weight_decay'] = group['weight_decay'] * group['decay_mult']


@pytest.mark.parametrize('schedule', ['cos_lr', 'step_lr 2 3', 'MAS_lr 1 2 3 4', 'MAS_lr 2 3'])
def test_warmup_replaces_the_schedule_as_the_release(schedule):
    lr_type, *steps = schedule.split()
    args = parse_args(['--lr', '0.01', '--epochs', '6', '--warmup', '3', '--weight_decay', '5e-4',
                       '--lr_type', lr_type] + (['--lr_steps', *steps] if steps else []))
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1),
                          nn.Flatten(), nn.Linear(4, 2))
    optimizer = torch.optim.SGD(optim_policies(model), args.lr, momentum=0.9,
                                weight_decay=args.weight_decay)
    release = [{'lr_mult': g['lr_mult'], 'decay_mult': g['decay_mult'],
                'weight_decay': args.weight_decay} for g in optimizer.param_groups]
    for epoch in range(args.epochs):
        _release_adjust_learning_rate(release, args, epoch)
        apply_lr(optimizer, lr_at_epoch(args.lr_type, args.lr, epoch, args.lr_steps, args.epochs,
                                        args.warmup), args.weight_decay)
        for ours, theirs in zip(optimizer.param_groups, release):
            assert ours['lr'] == pytest.approx(theirs['lr'], rel=1e-12), (epoch, ours['name'])
            assert ours['weight_decay'] == theirs['weight_decay'], (epoch, ours['name'])
    # the example: --warmup 3 --lr_type cos_lr --epochs 4, epoch 1 at 2/3 of the lr
    assert lr_at_epoch('cos_lr', 0.01, 1, epochs=4, warmup=3) == pytest.approx(0.0066667, abs=1e-7)
    assert lr_at_epoch('cos_lr', 0.01, 3, epochs=4, warmup=3) == \
        pytest.approx(0.005 * (1 + math.cos(0.75 * math.pi)))  # not shifted by the warm-up


def _fake_dataset_tree(root, lists=('train.txt', 'valid.txt')):
    os.makedirs(root / 'somethingv1' / '20bn-something-something-v1', exist_ok=True)
    (root / 'somethingv1' / 'category.txt').write_text(
        '\n'.join(f'class {i}' for i in range(174)) + '\n')
    for name in lists:
        (root / 'somethingv1' / name).write_text('1 8 0\n')


def test_somethingv1_mini_and_default_dataset_paths(tmp_path, monkeypatch, caplog):
    _fake_dataset_tree(tmp_path, ('train.txt', 'trainQ.txt', 'valid.txt'))
    cfg = get_dataset_config('somethingv1_mini', str(tmp_path))
    assert cfg.train_list == str(tmp_path / 'somethingv1' / 'trainQ.txt')
    assert cfg.val_list == str(tmp_path / 'somethingv1' / 'valid.txt')
    assert cfg.num_class == 174 and cfg.image_tmpl == '{:05d}.jpg'

    work = tmp_path / 'a' / 'b'
    os.makedirs(work)
    monkeypatch.chdir(work)
    _fake_dataset_tree(tmp_path / 'datasets')  # ../../datasets/ seen from a/b
    with caplog.at_level(logging.INFO, logger='masnet'):
        cfg = get_dataset_config('somethingv1')
    assert cfg.val_list == os.path.join('../../datasets/', 'somethingv1/valid.txt')
    assert "using '../../datasets/'" in caplog.text
    _fake_dataset_tree(tmp_path / 'a')  # the release's ../ wins when it holds the dataset
    expected = os.path.join('../', 'somethingv1/valid.txt')
    assert get_dataset_config('somethingv1').val_list == expected


def test_gpus_default_is_the_releases_four(monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 8)
    assert setup_runtime(None).gpu_ids == (0, 1, 2, 3)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 2)
    assert setup_runtime(None).gpu_ids == (0, 1)
    assert setup_runtime([1]).gpu_ids == (1,)


def test_release_checkpoint_without_segments_uses_16(tmp_path, caplog):
    model = TemporalModel(5, 16, 'MASNet', 'resnet10', input_size=64)
    path = str(tmp_path / 'release.pth.tar')
    torch.save({'epoch': 3, 'arch': 'resnet10', 'best_prec1': 1.0,
                'state_dict': {'module.' + k: v for k, v in model.state_dict().items()}}, path)
    with caplog.at_level(logging.INFO, logger='masnet'):
        rebuilt = model_from_checkpoint(read_checkpoint(path), path, 5, input_size=64)
    assert rebuilt.num_segments == 16
    assert "records no segment count: using 16" in caplog.text


def test_release_score_files_are_matched_by_position(tmp_path, capsys):
    rng = np.random.default_rng(0)
    labels = np.array([0, 1, 2, 1])
    a = rng.normal(size=(4, 1, 3)).astype(np.float32)  # the release's (N, 1, C) scores
    b = rng.normal(size=(4, 1, 3)).astype(np.float32)
    np.savez(tmp_path / 'v1_8.npz', scores=a, labels=labels, predictions=a[:, 0].argmax(1))
    np.savez(tmp_path / 'v1_16.npz', scores=b, labels=labels, predictions=b[:, 0].argmax(1))
    combined, (top1, _, _) = average_scores.main([str(tmp_path / 'v1_8.npz'),
                                                  str(tmp_path / 'v1_16.npz')])
    assert np.allclose(combined, a[:, 0] + b[:, 0])
    assert top1 == pytest.approx(100 * np.mean((a[:, 0] + b[:, 0]).argmax(1) == labels))
    np.savez(tmp_path / 'other.npz', scores=b, labels=labels[::-1], predictions=labels)
    with pytest.raises(SystemExit):
        average_scores.main([str(tmp_path / 'v1_8.npz'), str(tmp_path / 'other.npz')])
    assert 'disagree in labels' in capsys.readouterr().err


RECIPES = {
    'v1_8': 'somethingv1 8 0.01 70 32 0.5 5e-4 MAS_lr 30 40 50 60',
    'v2_16': 'somethingv2 16 0.005 70 16 0.8 5e-4 MAS_lr 30 40 50 60',
    'k400_8': 'kinetics 8 0.01 100 32 0.5 1e-4 step_lr 65 75 90',
    # train_kinetics16.sh (commit adaf45f) passes neither: its opts.py defaults 1e-4, step_lr
    'k400_16': 'kinetics 16 0.005 100 16 0.8 1e-4 step_lr 50 75 90',
}


@pytest.mark.parametrize('recipe', sorted(RECIPES))
def test_train_script_recipes_are_the_releases(recipe):
    out = subprocess.run(['bash', 'scripts/train.sh', recipe], cwd=ROOT, capture_output=True,
                         text=True, env={**os.environ, 'PYTHON': 'echo'}, check=True).stdout
    argv = shlex.split(out)
    assert argv[0] == 'main.py'
    args = parse_args(argv[1:])
    dataset, segments, lr, epochs, batch, dropout, wd, lr_type, *steps = RECIPES[recipe].split()
    assert (args.dataset, args.num_segments, args.epochs, args.batch_size, args.lr_type) == \
        (dataset, int(segments), int(epochs), int(batch), lr_type)
    assert (args.lr, args.dropout, args.weight_decay) == (float(lr), float(dropout), float(wd))
    assert args.lr_steps == [float(s) for s in steps]
    assert args.gpus == [0, 1, 2, 3] and args.arch == 'resnet50' and not args.partialbn
