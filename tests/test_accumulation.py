"""Gradient accumulation (--accumulate), the effective batch and its recipe check (--recipe_batch,
--scale_lr), and the --sync_bn refusals and conversion."""
import contextlib
import logging
import os
import re
import signal
import subprocess
import sys

import pytest
import torch
from torch.utils.data import DistributedSampler

import main as train_main
from ops.checkpoint import read_checkpoint
from ops.engine import TrainStep, optimiser_steps, train_one_epoch
from ops.errors import UserError
from ops.run_train import RECIPE_BATCHES, MicroBatchSampler, batch_layout, check_batch
from ops.runtime import Runtime, SyncBatchNormUnavailable, check_sync_bn, setup_runtime
from opts import parse_args
from tests.conftest import ROOT, free_port

CPU = torch.device('cpu')


def _linear_step(clip=0.0):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    optimizer = torch.optim.SGD(model.parameters(), 0.5, momentum=0.9)
    step = TrainStep(model, torch.nn.CrossEntropyLoss(), optimizer,
                     torch.amp.GradScaler('cuda', enabled=False), clip_gradient=clip)
    return model, step


def _batch(n=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 2, 2, generator=g), torch.randint(0, 3, (n,), generator=g)


@pytest.mark.parametrize('clip', [0.0, 0.05])
def test_micro_batches_give_the_gradient_of_the_whole_batch(clip):
    """Uneven micro-batches (1, 2, 3 clips) weighted n_i / n: the update of one batch of 6,
    with the gradient norm clipped once per step (0.05 clips it)."""
    clips, labels = _batch()
    whole, step = _linear_step(clip)
    out_whole, loss_whole = step([(clips, labels)], 0, 0)
    parts, step = _linear_step(clip)
    micro = [(clips[:1], labels[:1]), (clips[1:3], labels[1:3]), (clips[3:], labels[3:])]
    out_parts, loss_parts = step(micro, 0, 0)
    for a, b in zip(whole.parameters(), parts.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(loss_parts, loss_whole)
    torch.testing.assert_close(out_parts, out_whole.detach())


class _CountingDDP(torch.nn.Module):
    """A model with DDP's no_sync(): records which forwards/backwards ran inside it."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(12, 3)
        self.unsynced, self.forwards = [], 0

    @contextlib.contextmanager
    def no_sync(self):
        self.unsynced.append(self.forwards)
        yield

    def forward(self, x):
        self.forwards += 1
        return self.linear(x.flatten(1))


def test_ddp_skips_the_all_reduce_on_all_but_the_last_micro_batch():
    model = _CountingDDP()
    step = TrainStep(model, torch.nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), 0.1),
                     torch.amp.GradScaler('cuda', enabled=False))
    clips, labels = _batch(8)
    step([(clips[i:i + 2], labels[i:i + 2]) for i in range(0, 8, 2)], 0, 0)
    assert model.unsynced == [0, 1, 2]  # micro-batches 0, 1, 2 in no_sync; 3 all-reduces


def test_an_epoch_of_micro_batches_counts_optimiser_steps(caplog):
    """6 micro-batches, --accumulate 2: 3 steps; the lr is set per step from the fractional
    epoch, --print-freq and the checkpoint hook count steps, the clips count every clip."""
    model, step = _linear_step()
    batches = [_batch(2, seed) for seed in range(6)]
    lrs, hooks = [], []

    def set_lr(epoch):
        lrs.append(epoch)
        return 0.1
    with caplog.at_level(logging.INFO, logger='masnet'):
        train_one_epoch(step, batches, setup_runtime(None), 1, set_lr, print_freq=2,
                        after_iteration=lambda done, clips, sums: hooks.append((done, clips)),
                        accumulate=2)
    assert lrs == pytest.approx([1.0, 1 + 1 / 3, 1 + 2 / 3])
    assert hooks == [(1, 4), (2, 8), (3, 12)]
    assert re.findall(r'Epoch: \[1\]\[(\d+)/(\d+)\]', caplog.text) == [('0', '3'), ('2', '3')]
    assert [len(s) for s in optimiser_steps(range(5), 2)] == [2, 2, 1]


def test_micro_batch_i_holds_the_clips_of_rank_i():
    """1 process with --accumulate 2 (and 2 processes with 2 each): micro-batch i of step s is
    what rank i (rank r * 2 + i) of a 2 (4) process run trains in step s."""
    dataset = list(range(23))
    for replicas, accumulate, micro in ((1, 2, 4), (2, 2, 2), (1, 3, 2)):
        virtual = replicas * accumulate
        for rank in range(replicas):
            sampler = MicroBatchSampler(dataset, replicas, rank, 7, accumulate, micro)
            sampler.set_epoch(3)
            shards = []
            for v in range(rank * accumulate, (rank + 1) * accumulate):
                shard = DistributedSampler(dataset, virtual, v, shuffle=True, seed=7)
                shard.set_epoch(3)
                shards.append(list(shard))
            steps = len(shards[0]) // micro
            expected = [x for s in range(steps) for shard in shards
                        for x in shard[s * micro:(s + 1) * micro]]
            order = list(sampler)
            assert order == expected and len(sampler) == len(order) == steps * micro * accumulate
            sampler.set_epoch(3, skip=micro * accumulate)  # a resume after one step
            assert list(sampler) == order[micro * accumulate:]
    tiny = MicroBatchSampler(list(range(5)), 1, 0, 0, 2, 4)  # less than one step: all of it
    tiny.set_epoch(0)
    assert set(tiny) == set(range(5)) and len(list(tiny)) == len(tiny) == 6  # padded as 2 ranks


def _runtime(world=1, gpus=()):
    return Runtime(CPU, world_size=world, gpu_ids=gpus)


def test_the_batch_layout_and_a_batch_accumulate_does_not_divide():
    args = parse_args(['-b', '32', '--accumulate', '4', '--dataset', 'somethingv1'])
    assert batch_layout(args, _runtime()) == {
        'processes': 1, 'dataparallel_gpus': 1, 'accumulate': 4, 'micro_batch': 8,
        'per_device': 8, 'effective': 32, 'recipe': 32, 'lr_given': 0.01}
    layout = batch_layout(parse_args(['-b', '32', '--accumulate', '2']), _runtime(2))
    assert (layout['micro_batch'], layout['effective'], layout['recipe']) == (8, 32, None)
    assert batch_layout(parse_args(['-b', '16']), _runtime(gpus=(0, 1)))['per_device'] == 8
    with pytest.raises(UserError, match=r'^--accumulate 4: --batch-size 30 gives 30 clips per '
                                        r'process \(1 process\(es\)\), not a multiple of 4$'):
        batch_layout(parse_args(['-b', '30', '--accumulate', '4']), _runtime())
    with pytest.raises(UserError, match='--batch-size 16 gives 8 clips per process'):
        batch_layout(parse_args(['-b', '16', '--accumulate', '3']), _runtime(2))


def _check(argv, caplog, runtime=None):
    args = parse_args(argv)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger='masnet'):
        check_batch(args, runtime or _runtime())
    return args, [r for r in caplog.records if 'linear scaling' in r.getMessage()]


def test_a_run_off_its_recipes_batch_says_so_once_with_the_scaled_lr(caplog):
    v1 = ['--dataset', 'somethingv1', '--num_segments', '8', '--lr', '0.01']
    args, lines = _check(v1 + ['-b', '8'], caplog)
    assert [r.getMessage() for r in lines] == [
        "effective batch 8 clips, not the recipe's 32 (--recipe_batch): the linear scaling "
        "rule gives --lr 0.0025 (--lr 0.01 x 8/32); --scale_lr applies it"]
    assert args.lr == 0.01 and args.batch_layout['effective'] == 8
    # following the recipe: 32 clips on one device, 8 x 4 micro-batches, 4 processes of 8
    for argv, runtime in ((['-b', '32'], None), (['-b', '32', '--accumulate', '4'], None),
                          (['-b', '32'], _runtime(4))):
        args, lines = _check(v1 + argv, caplog, runtime)
        assert lines == [] and 'batch: 32 clips per optimiser step' in caplog.text
    args, lines = _check(v1 + ['-b', '8', '--scale_lr'], caplog)
    assert len(lines) == 1 and args.lr == pytest.approx(0.0025)
    assert args.batch_layout['lr_given'] == 0.01
    assert _check(v1 + ['--num_segments', '16', '-b', '16', '--lr', '0.005'], caplog)[1] == []
    assert _check(['-b', '8'], caplog)[1] == []  # synthetic: no recipe
    assert len(_check(['-b', '8', '--recipe_batch', '64'], caplog)[1]) == 1


def test_the_recipe_batches_are_those_of_scripts_train_sh():
    with open(os.path.join(ROOT, 'scripts', 'train.sh')) as f:
        script = f.read()
    recipes = re.findall(r'DATASET=(\S+?); SEGMENTS=(\d+)\n\s+FLAGS=\(.*--batch-size (\d+)',
                         script)
    assert len(recipes) == 4
    for dataset, segments, batch in recipes:
        names = [f'something{v}' for v in ('v1', 'v2')] if 'RECIPE' in dataset else [dataset]
        for name in names:
            assert RECIPE_BATCHES[(name, int(segments))] == int(batch)


def test_sync_bn_is_refused_without_cuda_processes():
    check_sync_bn(False, _runtime())
    with pytest.raises(SyncBatchNormUnavailable, match='this run has one process'):
        check_sync_bn(True, _runtime(gpus=(0, 1)))
    with pytest.raises(SyncBatchNormUnavailable, match='CUDA devices only, this torchrun run '
                                                       'uses the CPU'):
        check_sync_bn(True, _runtime(2))


def norm_kinds(model):
    return {type(m) for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._NormBase)}


@pytest.mark.slow
def test_sync_bn_converts_every_batchnorm_and_the_mas_forms_still_run():
    """Every BatchNorm2d and the MSM's BatchNorm3d become SyncBatchNorm (same state_dict keys);
    in eval mode (the CPU can run SyncBatchNorm there) each form of the MAS block gives the
    same scores as before. Training mode needs CUDA: tools/gpu_check.py's sync_bn step."""
    from ops.MASNet import set_form
    from ops.models import TemporalModel
    from ops.runtime import wrap_model
    from tests.conftest import randomize_bn
    model = randomize_bn(TemporalModel(4, 4, 'MASNet', 'resnet10',
                                       input_size=32)).eval()
    kinds = norm_kinds(model)
    assert kinds == {torch.nn.BatchNorm2d, torch.nn.BatchNorm3d}
    keys = list(model.state_dict())
    clips = torch.randn(2, 12, 32, 32)
    before = {}
    for form in ('eager', 'reference'):
        set_form(form, model)
        before[form] = model(clips)
    wrap_model(model, _runtime(), sync_bn=True)
    kinds = norm_kinds(model)
    assert kinds == {torch.nn.SyncBatchNorm} and list(model.state_dict()) == keys
    for form in ('eager', 'reference'):
        set_form(form, model)
        torch.testing.assert_close(model(clips), before[form])


# ---- end to end ---------------------------------------------------------------------------------

def flags(data_root, out, name, *extra):
    return ['--dataset', 'synthetic', '--dataset_path', data_root, '--arch', 'resnet10',
            '--num_segments', '4', '--input_size', '32', '--pretrain', 'none', '-j', '0',
            '--epochs', '1', '--lr', '0.05', '--lr_type', 'cos_lr', '--seed', '1',
            '--dropout', '0', '--root_log', out, '--root_checkpoint', out, '-p', '1',
            '--store_name', name, *extra]


def checkpoint(out, name):
    return read_checkpoint(os.path.join(out, 'synthetic', 'MASNet', 'resnet10', 'num_segments_4',
                                        name, 'checkpoint', 'ckpt.pth.tar'))


def parameters(ckpt):
    """The trained parameters (no BatchNorm running statistics) as one vector."""
    state = ckpt['state_dict']
    return torch.cat([v.flatten().double() for k, v in sorted(state.items())
                      if not k.endswith(('running_mean', 'running_var', 'num_batches_tracked'))])


def relative_distance(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.slow
@pytest.mark.distributed
def test_accumulation_trains_the_parameters_of_as_many_torchrun_processes(tiny_data_root,
                                                                          tmp_path):
    """--batch-size 8 --accumulate 2 in one process = --batch-size 8 over 2 torchrun (gloo)
    processes (4 clips each, BatchNorm over 4), after 3 steps; one process at batch 8 without
    accumulation (BatchNorm over 8) is far from both."""
    out = str(tmp_path)
    env = dict(os.environ, OMP_NUM_THREADS='1')
    done = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'torchrun.py'),
                           '--nproc_per_node', '2', '--master_port', str(free_port()), 'main.py',
                           *flags(tiny_data_root, out, 'ddp', '-b', '8')],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    train_main.main(flags(tiny_data_root, out, 'accumulate', '-b', '8', '--accumulate', '2'))
    train_main.main(flags(tiny_data_root, out, 'whole', '-b', '8'))
    ddp, accumulated, whole = (checkpoint(out, n) for n in ('ddp', 'accumulate', 'whole'))
    assert ddp['args']['batch_layout']['effective'] == accumulated['args']['batch_layout'][
        'effective'] == 8
    near = relative_distance(parameters(accumulated), parameters(ddp))
    far = relative_distance(parameters(whole), parameters(ddp))
    assert near < 1e-5 and far > 100 * near, (near, far)


@pytest.mark.slow
def test_a_sigterm_mid_accumulation_resumes_bit_for_bit(tiny_data_root, tmp_path, monkeypatch):
    """SIGTERM during the first of step 1's 2 micro-batches: the step finishes, the checkpoint
    is at its end (iteration 2), and the resumed run ends with the uninterrupted weights."""
    out = str(tmp_path)
    common = ('-b', '8', '--accumulate', '2', '--epochs', '2', '--dropout', '0.5')
    train_main.main(flags(tiny_data_root, out, 'whole', *common))
    forward = torch.nn.CrossEntropyLoss.forward
    calls = []

    def signalling(self, output, labels):
        if torch.is_grad_enabled():
            calls.append(labels.size(0))
            if len(calls) == 3:  # step 1, micro-batch 0 of 2
                os.kill(os.getpid(), signal.SIGTERM)
        return forward(self, output, labels)
    monkeypatch.setattr(torch.nn.CrossEntropyLoss, 'forward', signalling)
    with pytest.raises(SystemExit) as stopped:
        train_main.main(flags(tiny_data_root, out, 'cut', *common))
    assert stopped.value.code == 75 and calls == [4, 4, 4, 4]
    assert checkpoint(out, 'cut')['progress']['iteration'] == 2
    assert checkpoint(out, 'cut')['progress']['clips'] == 16
    monkeypatch.setattr(torch.nn.CrossEntropyLoss, 'forward', forward)
    train_main.main(flags(tiny_data_root, out, 'cut', *common))
    got, want = checkpoint(out, 'cut'), checkpoint(out, 'whole')
    assert got['epoch'] == want['epoch'] == 2 and 'progress' not in got
    assert all(torch.equal(v, want['state_dict'][k]) for k, v in got['state_dict'].items())
