"""End to end on a tiny generated dataset: train, resume, evaluate, ensemble, errors."""
import glob
import logging
import math
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import average_scores
import main as train_main
import test as test_main
from ops.checkpoint import read_checkpoint, save_checkpoint
from ops.logs import read_scalars
from ops.meters import format_duration, throughput
from ops.models import TemporalModel
from ops.optim import apply_lr, lr_at_epoch
from ops.runtime import to_channels_last
from ops.scores import load_scores, save_scores, summarize
from tests.conftest import ROOT

# ---- lr schedules ---------------------------------------------------------------------------

def test_mas_lr_values():
    steps = [30, 40, 50, 60]
    got = [lr_at_epoch('MAS_lr', 0.01, e, steps) for e in (0, 29, 30, 39, 40, 50, 60, 69)]
    expected = [1e-2, 1e-2, 1e-3, 1e-3, 1e-4, 5e-5, 1e-5, 1e-5]
    assert got == pytest.approx(expected, rel=1e-9)


def test_step_and_cosine_lr_values():
    assert [lr_at_epoch('step_lr', 0.1, e, [10, 20]) for e in (0, 10, 25)] == \
        pytest.approx([0.1, 0.01, 0.001])
    assert lr_at_epoch('cos_lr', 0.1, 0, epochs=10) == pytest.approx(0.1)
    assert lr_at_epoch('cos_lr', 0.1, 5, epochs=10) == pytest.approx(0.05)
    assert (lr_at_epoch('cos_lr', 0.1, 3, epochs=10)
            == pytest.approx(0.05 * (1 + math.cos(0.3 * math.pi))))


@pytest.mark.parametrize('lr_type', ['step_lr', 'cos_lr', 'MAS_lr'])
def test_release_schedules_are_constant_within_an_epoch(lr_type):
    """lr(epoch + fraction) is the lr of the epoch (the release sets it once per epoch)."""
    for warmup in (0, 3):
        for epoch in range(12):
            at_start = lr_at_epoch(lr_type, 0.01, epoch, [2, 4, 6, 8], 12, warmup)
            for fraction in (0.25, 0.5, 0.999):
                assert lr_at_epoch(lr_type, 0.01, epoch + fraction, [2, 4, 6, 8], 12,
                                   warmup) == at_start, (epoch, fraction, warmup)
    assert lr_at_epoch(lr_type, 0.01, 1.5, [2, 4, 6, 8], 12, 3) == 0.01 * 2 / 3
    # a fractional step is reached by the next whole epoch, as in the release
    assert lr_at_epoch(lr_type, 0.01, 2.9, [2.5, 4], 12) != lr_at_epoch(lr_type, 0.01, 3, [2.5, 4],
                                                                        12)


def _recorded_lrs(progress_state=None):
    """The fractional epochs and lrs train_one_epoch sets for 4 iterations of epoch 2."""
    from ops.engine import TrainStep, train_one_epoch
    from ops.runtime import rng_state, setup_runtime

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    optimizer = torch.optim.SGD(model.parameters(), 0.1)
    step = TrainStep(model, torch.nn.CrossEntropyLoss(), optimizer,
                     torch.amp.GradScaler('cuda', enabled=False))
    batches = [(torch.randn(2, 3, 2, 2), torch.tensor([0, 1])) for _ in range(4)]
    seen = []

    def set_lr(epoch):
        lr = 0.1 * (1 - epoch / 4) ** 2  # a per-iteration polynomial decay over 4 epochs
        seen.append((epoch, lr))
        for group in optimizer.param_groups:
            group['lr'] = lr
        return lr
    if progress_state is not None:
        progress_state = dict(progress_state, rng=rng_state(torch.device('cpu')),
                              meters=[0.0, 0, 0.0, 0.0])
        batches = batches[progress_state['iteration']:]
    train_one_epoch(step, batches, setup_runtime(None), 2, set_lr, print_freq=100,
                    progress_state=progress_state)
    return seen


def test_the_lr_is_set_per_iteration_from_the_fractional_epoch():
    """A per-iteration schedule is one function of the fractional epoch; a resumed epoch
    continues at the fraction it reached."""
    seen = _recorded_lrs()
    assert [e for e, _ in seen] == [2.0, 2.25, 2.5, 2.75]
    assert [lr for _, lr in seen] == [0.1 * (1 - e / 4) ** 2 for e in (2.0, 2.25, 2.5, 2.75)]
    assert _recorded_lrs({'iteration': 2, 'clips': 4}) == seen[2:]


def test_a_new_schedule_is_one_function_and_one_name(monkeypatch):
    from ops import optim
    from opts import parse_args
    monkeypatch.setattr(optim, 'LR_SCHEDULES', dict(optim.LR_SCHEDULES))
    monkeypatch.setattr('opts.LR_SCHEDULES', optim.LR_SCHEDULES)

    @optim.lr_schedule('linear_lr')
    def linear_lr(epoch, base_lr, lr_steps, epochs):
        return base_lr * (1 - epoch / epochs)
    args = parse_args(['--lr_type', 'linear_lr', '--epochs', '4', '--lr', '0.1'])
    assert lr_at_epoch(args.lr_type, args.lr, 1.5, args.lr_steps, args.epochs) == \
        pytest.approx(0.1 * (1 - 1.5 / 4))


def test_group_multipliers_applied():
    model = TemporalModel(4, 4, 'MASNet', 'resnet10', input_size=64)
    optimizer = torch.optim.SGD(model.get_optim_policies(), 0.1, momentum=0.9)
    apply_lr(optimizer, 0.01, 5e-4)
    by_name = {g['name']: (g['lr'], g['weight_decay']) for g in optimizer.param_groups}
    assert by_name['first_conv_weight'] == pytest.approx((0.01, 5e-4))
    assert by_name['first_conv_bias'] == pytest.approx((0.02, 0))
    assert by_name['normal_bias'] == pytest.approx((0.02, 0))
    assert by_name['bn'] == pytest.approx((0.01, 0))


# ---- training runs --------------------------------------------------------------------------

def train_args(data_root, out, *extra):
    return ['--dataset', 'synthetic', '--dataset_path', data_root, '--arch', 'resnet10',
            '--num_segments', '4', '--input_size', '32', '--pretrain', 'none', '-b', '8', '-j', '0',
            '--lr', '0.01', '--lr_type', 'step_lr', '--lr_steps', '1', '--epochs', '2',
            '--root_log', out, '--root_checkpoint', out, '--store_name', 'run', '-p', '1',
            '--seed', '3', *extra]


def run_dir(out):
    return os.path.join(out, 'synthetic', 'MASNet', 'resnet10', 'num_segments_4', 'run')


@pytest.fixture(scope='module')
def trained(tiny_data_root, tmp_path_factory):
    out = str(tmp_path_factory.mktemp('exp'))
    best = train_main.main(train_args(tiny_data_root, out))
    return out, best


@pytest.mark.slow
def test_training_writes_logs_events_and_checkpoints(trained):
    out, best = trained
    folder = run_dir(out)
    log = open(os.path.join(folder, 'log', 'log.txt')).read()
    assert 'Epoch: [1][0/3], lr: 0.00100' in log and 'Prec@1' in log
    assert os.path.isfile(os.path.join(folder, 'log', 'args.json'))
    scalars = read_scalars(os.path.join(folder, 'tensorboardX'))
    assert [s for s, _ in scalars['lr']] == [0, 1]
    assert [v for _, v in scalars['lr']] == pytest.approx([0.01, 0.001])
    for tag in ('loss/train', 'acc/train_top1', 'loss/test', 'acc/test_top1', 'acc/test_top5'):
        assert len(scalars[tag]) == 2, tag
    assert all(0 <= v <= 100 for _, v in scalars['acc/test_top1'])
    assert max(v for _, v in scalars['acc/test_top1']) == pytest.approx(best)
    ckpt = read_checkpoint(os.path.join(folder, 'checkpoint', 'ckpt.pth.tar'))
    assert ckpt['epoch'] == 2 and ckpt['type'] == 'MASNet' and ckpt['num_segments'] == 4
    assert ckpt['best_prec1'] == pytest.approx(best) and 'optimizer' in ckpt
    assert os.path.isfile(os.path.join(folder, 'checkpoint', 'ckpt.best.pth.tar'))


DURATION = r'\d+:\d\d:\d\d'


@pytest.mark.slow
def test_logs_print_clips_per_second_and_eta(tiny_data_root, trained, capsys):
    out, _ = trained
    log = open(os.path.join(run_dir(out), 'log', 'log.txt')).read()
    # -b 8 on 24 training clips: 3 iterations an epoch, each interval line counts the clips done
    for epoch in (0, 1):
        for i, done in enumerate((8, 16, 24)):
            assert re.search(rf'Epoch: \[{epoch}\]\[{i}/3\].*\t{done}/24 clips in {DURATION}, '
                             rf'\d+\.\d clips/s, ETA {DURATION}\n', log), (epoch, i)
        assert re.search(rf'Epoch: \[{epoch}\] trained 24 clips in {DURATION}, \d+\.\d clips/s\n',
                         log)
    assert len(re.findall(rf'val: evaluated 16 clips in {DURATION}, \d+\.\d clips/s\n', log)) == 2
    assert re.search(rf'Epoch 0 done; 1 epoch\(s\) in {DURATION}, ETA of the run {DURATION} '
                     rf'\(1 epoch\(s\) left\)', log)
    assert re.search(rf'Epoch 1 done; 2 epoch\(s\) in {DURATION}, ETA of the run 0:00:00 '
                     rf'\(0 epoch\(s\) left\)', log)
    # test.py: a line per tenth of the batches (4 batches of 4 videos here)
    capsys.readouterr()
    test_main.main(['--dataset', 'synthetic', '--dataset_path', tiny_data_root, '--weights',
                    os.path.join(run_dir(out), 'checkpoint', 'ckpt.pth.tar'), '-j', '0',
                    '--batch_size', '4', '--test_crops', '3', '--save_scores', ''])
    out = capsys.readouterr().out
    lines = re.findall(rf'test: (\d+)/16 videos in {DURATION}, \d+\.\d videos/s, ETA '
                       rf'({DURATION})\n', out)
    assert [int(n) for n, _ in lines] == [4, 8, 12, 16] and lines[-1][1] == '0:00:00'
    # and a summary: 16 videos of 3 views (3 crops of one clip) each
    summary = re.search(rf'test: evaluated 16 videos, 48 clips \(views x models\) in {DURATION}: '
                        rf'(\d+\.\d) videos/s, (\d+\.\d) clips/s\n', out)
    assert summary and 0 < float(summary[1]) < 10000
    assert float(summary[2]) == pytest.approx(3 * float(summary[1]), abs=0.2)


def test_throughput_and_eta_values(monkeypatch):
    monkeypatch.setattr(time, 'time', lambda: 1000.0)
    assert throughput(30, 990.0, 90) == '30/90 clips in 0:00:10, 3.0 clips/s, ETA 0:00:20'
    assert throughput(30, 990.0, 90, world_size=2) == \
        '60/180 clips in 0:00:10, 6.0 clips/s, ETA 0:00:20'
    assert throughput(5, 990.0, unit='videos') == '5 videos in 0:00:10, 0.5 videos/s'
    assert throughput(0, 1000.0, 10).endswith('nan clips/s, ETA ?')
    assert format_duration(3 * 3600 + 62.4) == '3:01:02'


@pytest.mark.slow
def test_resume_matches_uninterrupted_run(tiny_data_root, trained, tmp_path):
    out, _ = trained
    full = read_checkpoint(os.path.join(run_dir(out), 'checkpoint', 'ckpt.pth.tar'))
    half_out = str(tmp_path / 'half')
    train_main.main(train_args(tiny_data_root, half_out, '--epochs', '1'))
    latest = os.path.join(run_dir(half_out), 'checkpoint', 'ckpt.pth.tar')
    assert read_checkpoint(latest)['epoch'] == 1
    # the same command again, with 2 epochs: continues from the run folder's latest checkpoint
    train_main.main(train_args(tiny_data_root, half_out))
    resumed = read_checkpoint(latest)
    assert resumed['epoch'] == 2
    for k, v in full['state_dict'].items():
        torch.testing.assert_close(resumed['state_dict'][k], v, rtol=0, atol=1e-6, msg=k)
    log = open(os.path.join(run_dir(half_out), 'log', 'log.txt')).read()
    assert 'exists: resuming this run' in log and 'at epoch 1' in log
    # --evaluate in the same run folder validates its latest checkpoint
    top1 = train_main.main(train_args(tiny_data_root, half_out, '--evaluate'))
    last_val = read_scalars(os.path.join(run_dir(half_out), 'tensorboardX'))['acc/test_top1'][-1]
    assert last_val[0] == 1 and top1 == pytest.approx(last_val[1])  # epoch 1's validation
    log = open(os.path.join(run_dir(half_out), 'log', 'log.txt')).read()
    assert log.count('exists: resuming this run') == 2
    # an explicit --resume of a finished run trains nothing more
    train_main.main(train_args(tiny_data_root, str(tmp_path / 'other'), '--resume', latest))
    assert read_checkpoint(latest)['epoch'] == 2
    other_ckpt = os.path.join(run_dir(str(tmp_path / 'other')), 'checkpoint', 'ckpt.pth.tar')
    assert not os.path.exists(other_ckpt)


@pytest.mark.slow
def test_test_py_views_scores_and_average(tiny_data_root, trained, tmp_path):
    out, _ = trained
    weights = os.path.join(run_dir(out), 'checkpoint', 'ckpt.pth.tar')
    score_dir = str(tmp_path / 'score')
    common = ['--dataset', 'synthetic', '--dataset_path', tiny_data_root, '--weights', weights,
              '--test_segments', '4', '-j', '0', '--save_scores', score_dir]
    single = test_main.main(common + ['--test_crops', '1', '--batch_size', '4'])
    multi = test_main.main(common + ['--test_crops', '3', '--twice_sample', '--full_res',
                                     '--batch_size', '2', '--csv_file', str(tmp_path / 'sub.csv')])
    files = sorted(glob.glob(os.path.join(score_dir, '*.npz')))
    names = sorted(os.path.basename(f) for f in files)
    assert names == ['synthetic_MASNet_resnet10_4f_1crop_1clip_32px.npz',
                     'synthetic_MASNet_resnet10_4f_3crop_2clip_36px.npz']
    a, b = load_scores(files[0]), load_scores(files[1])
    assert a['scores'].shape == (16, 8) and list(a['video_ids']) == list(b['video_ids'])
    assert summarize(a['scores'], a['labels']) == pytest.approx(single)
    assert summarize(b['scores'], b['labels']) == pytest.approx(multi)
    lines = open(tmp_path / 'sub.csv').read().splitlines()
    assert len(lines) == 16 and ';' in lines[0]

    combined, result = average_scores.main(files + ['--weights', '1', '3'])
    by_hand = a['scores'] + 3 * b['scores']
    np.testing.assert_allclose(combined, by_hand, rtol=1e-6)
    assert result == pytest.approx(summarize(by_hand, a['labels']))
    combined_default, _ = average_scores.main(['--score_dir', score_dir])
    np.testing.assert_allclose(combined_default, a['scores'] + b['scores'], rtol=1e-6)


@pytest.mark.slow
def test_release_checkpoint_evaluates(tiny_data_root, tmp_path):
    torch.manual_seed(0)
    model = TemporalModel(8, 4, 'MASNet', 'resnet10', input_size=32)
    path = str(tmp_path / 'release.pth.tar')
    save_checkpoint({'epoch': 70, 'arch': 'resnet10', 'best_prec1': 0.0,
                     'state_dict': {'module.' + k: v for k, v in model.state_dict().items()}}, path)
    scores_dir = str(tmp_path / 'scores')
    common = ['--dataset', 'synthetic', '--dataset_path', tiny_data_root, '--test_segments', '4',
              '--input_size', '32', '-j', '0']
    single = test_main.main(common + ['--weights', path, '--save_scores', scores_dir])
    pair = test_main.main(common + ['--weights', f'{path},{path}', '--save_scores', ''])
    assert pair == pytest.approx(single)  # an ensemble of one model twice is that model
    # the loaded release checkpoint computes what the saved model computes
    from ops.dataset import TSNDataSet
    from ops.dataset_config import get_dataset_config
    from ops.transforms import build_transform
    cfg = get_dataset_config('synthetic', tiny_data_root)
    transform = build_transform('test', 32, 36, model.input_mean, model.input_std)
    clips = torch.stack([TSNDataSet(cfg.root_path, cfg.val_list, 4, cfg.image_tmpl, transform,
                                    random_shift=False, test_mode=True)[i][0] for i in range(3)])
    with torch.no_grad():
        expected = model.eval()(clips).numpy()
    saved = load_scores(glob.glob(os.path.join(scores_dir, '*.npz'))[0])
    np.testing.assert_allclose(saved['scores'][:3], expected, rtol=1e-4, atol=1e-5)


def run_cli(*args):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow
def test_bad_inputs_give_one_line_errors(tiny_data_root, trained, tmp_path):
    out, _ = trained
    weights = os.path.join(run_dir(out), 'checkpoint', 'ckpt.pth.tar')
    res = run_cli('test.py', '--dataset', 'nope', '--weights', weights)
    assert res.returncode == 2 and "unknown dataset 'nope'" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1

    bad_list = tmp_path / 'bad.txt'
    bad_list.write_text('video_1 x 2\n')
    res = run_cli('test.py', '--dataset', 'synthetic', '--dataset_path', tiny_data_root,
                  '--weights', weights, '--test_list', str(bad_list), '-j', '0')
    assert res.returncode == 2 and 'bad.txt:1' in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1

    res = run_cli('test.py', '--dataset', 'synthetic', '--dataset_path', tiny_data_root,
                  '--weights', str(tmp_path / 'absent.pth.tar'))
    assert res.returncode == 2 and 'absent.pth.tar' in res.stderr and 'does not exist' in res.stderr

    s1, s2 = str(tmp_path / 's1.npz'), str(tmp_path / 's2.npz')
    save_scores(s1, np.zeros((2, 3)), [0, 1], ['a', 'b'])
    save_scores(s2, np.zeros((2, 3)), [0, 2], ['a', 'b'])
    res = run_cli('average_scores.py', s1, s2)
    assert res.returncode == 2 and 'disagree in labels' in res.stderr


@pytest.mark.slow
def test_diverged_training_stops_before_the_update():
    """A NaN loss stops the run with a one-line reason, before it corrupts the weights."""
    from ops.engine import TrainingDiverged, TrainStep, train_one_epoch
    from ops.runtime import setup_runtime

    torch.manual_seed(0)
    model = TemporalModel(4, 4, 'MASNet', 'resnet10', input_size=32)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), 0.1)
    scaler = torch.amp.GradScaler('cuda', enabled=False)
    loader = [(torch.randn(2, 12, 32, 32), torch.tensor([0, 1]))]
    with pytest.raises(TrainingDiverged, match='loss is nan at epoch 3, iteration 0'):
        step = TrainStep(model, lambda out, y: out.sum() * float('nan'), optimizer, scaler)
        train_one_epoch(step, loader, setup_runtime(None), 3, lambda epoch: 0.1, print_freq=1)
    for k, v in model.named_parameters():  # no optimizer step was taken
        assert torch.equal(v, before[k]), k


@pytest.mark.slow
def test_ctrl_c_keeps_the_last_checkpoint_and_the_same_command_resumes(tiny_data_root, tmp_path):
    """SIGINT mid-run: one line, exit 130, the last complete epoch's checkpoint loads; re-running
    the same command continues from it."""
    import signal
    import time

    out = str(tmp_path / 'exp')
    argv = [sys.executable, 'main.py'] + train_args(tiny_data_root, out, '--epochs', '50')
    latest = os.path.join(run_dir(out), 'checkpoint', 'ckpt.pth.tar')
    # a shell that starts the suite in the background (`make test &`) ignores SIGINT, and so
    # would the run: give it the default disposition, so that Python turns it into Ctrl-C
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT,
                                                                        signal.SIG_DFL))
    while not os.path.exists(latest) and proc.poll() is None:  # bounded by the run itself
        time.sleep(0.2)
    assert os.path.exists(latest), (proc.stderr.read() if proc.poll() is not None
                                    else 'no checkpoint')
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    # the progress bars (stderr) may clear their line after the message: look for the line
    assert proc.returncode == 130 and 'main.py: interrupted' in err.splitlines(), err
    assert 'Traceback' not in err, err
    done = read_checkpoint(latest)['epoch']
    assert 1 <= done < 50
    log = open(os.path.join(run_dir(out), 'log', 'log.txt')).read()
    assert 'run the same command to resume' in log
    # the same command, stopping one epoch further (fewer epochs: a recipe change)
    res = run_cli(*argv[1:-2], '--epochs', str(done + 1), '--resume_changed')
    assert res.returncode == 0, res.stderr
    assert read_checkpoint(latest)['epoch'] == done + 1
    assert f'at epoch {done}' in open(os.path.join(run_dir(out), 'log', 'log.txt')).read()


def scores_without_and_with(flag, data_root, tmp_path):
    """test.py's scores of a random MAS-ResNet-10 checkpoint, run as is and with `flag`."""
    torch.manual_seed(0)
    model = TemporalModel(8, 4, 'MASNet', 'resnet10', input_size=32)
    torch.nn.init.normal_(model.new_fc.weight, 0, 0.1)  # logits of a useful size
    path = str(tmp_path / 'model.pth.tar')
    save_checkpoint({'epoch': 1, 'arch': 'resnet10', 'type': 'MASNet', 'num_segments': 4,
                     'input_size': 32, 'best_prec1': 0.0, 'state_dict': model.state_dict()}, path)
    common = ['--dataset', 'synthetic', '--dataset_path', data_root, '--weights', path,
              '-j', '0', '--batch_size', '8']
    test_main.main(common + ['--save_scores', str(tmp_path / 'without')])
    test_main.main(common + ['--save_scores', str(tmp_path / 'with'), flag])
    without, with_flag = (load_scores(glob.glob(str(tmp_path / d / '*.npz'))[0])['scores']
                          for d in ('without', 'with'))
    assert np.abs(without).max() > 0.1
    return without, with_flag


@pytest.mark.slow
def test_test_py_compiled_gives_the_eager_scores(tiny_data_root, tmp_path, monkeypatch):
    """--compile: torch.compile'd evaluation, scores within 1e-4 of eager (float32)."""
    import torch._dynamo
    monkeypatch.setattr(torch._dynamo.config, 'suppress_errors', False)  # compile_model sets it
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    eager, compiled = scores_without_and_with('--compile', tiny_data_root, tmp_path)
    assert torch._dynamo.utils.counters['stats']['unique_graphs'] >= 1  # it did compile
    np.testing.assert_allclose(compiled, eager, rtol=1e-4, atol=1e-4)
    torch._dynamo.reset()


@pytest.mark.slow
def test_test_py_channels_last_gives_the_same_scores(tiny_data_root, tmp_path, monkeypatch):
    """--channels_last: NHWC convolutions and MAS blocks, scores within float32 rounding."""
    from ops import run_eval
    layouts = []

    def convert(model, enabled=True):
        converted = to_channels_last(model, enabled)
        layouts.append(model.base_model.conv1.weight.is_contiguous(
            memory_format=torch.channels_last))
        return converted
    monkeypatch.setattr(run_eval, 'to_channels_last', convert)
    nchw, nhwc = scores_without_and_with('--channels_last', tiny_data_root, tmp_path)
    assert layouts == [False, True]
    np.testing.assert_allclose(nhwc, nchw, rtol=1e-5, atol=1e-5)


# ---- resume: the recipe flags and the position in the epoch ----------------------------------

def test_a_flag_marked_where_it_is_defined_is_checked_on_resume(monkeypatch):
    """A new recipe (or shaping) flag is one marked definition in opts.py; no other list."""
    import opts
    from ops.checkpoint import CheckpointError
    from ops.run_train import check_resume_flags
    build = opts.build_parser

    def with_new_flags():
        parser = build()
        opts.recipe_flag(parser.add_argument('--label_smoothing', type=float, default=0.0))
        opts.shaping_flag(parser.add_argument('--mam_alpha', type=float, default=0.5))
        return parser
    monkeypatch.setattr(opts, 'build_parser', with_new_flags)
    recorded = {'args': vars(opts.parse_args([]))}
    args = opts.parse_args(['--label_smoothing', '0.1'])
    with pytest.raises(CheckpointError, match=r'another recipe \(--label_smoothing 0.0 in the '
                                              r'checkpoint, 0.1 now\): pass --resume_changed'):
        check_resume_flags(recorded, 'ckpt.pth.tar', args)
    check_resume_flags(recorded, 'ckpt.pth.tar', opts.parse_args(['--label_smoothing', '0.1',
                                                                  '--resume_changed']))
    with pytest.raises(CheckpointError, match='network-shaping flags .--mam_alpha 0.5 in the '
                                              'checkpoint, 0.8 now.'):
        check_resume_flags(recorded, 'ckpt.pth.tar',
                           opts.parse_args(['--mam_alpha', '0.8', '--resume_changed']))
    check_resume_flags(recorded, 'ckpt.pth.tar', opts.parse_args([]))


def _mid_epoch(progress, batch_size=8):
    from ops.run_train import Resume
    return Resume('ckpt.pth.tar', {'epoch': 1, 'args': {'batch_size': batch_size},
                                   'progress': dict(progress)})


class _Data:
    def __init__(self, count=24, sha='a' * 64):
        self.train_list_id = {'count': count, 'sha256': sha}


def test_a_mid_epoch_resume_continues_at_the_clip_it_reached(caplog):
    from ops.runtime import setup_runtime
    from opts import parse_args
    one = setup_runtime(None)
    listed = {'count': 24, 'sha256': 'a' * 64}
    saved = {'iteration': 2, 'clips': 16, 'batch_size': 8, 'world_size': 1,
             'train_list': listed}
    with caplog.at_level(logging.INFO, logger='masnet'):
        same = _mid_epoch(saved).epoch_progress(1, parse_args(['-b', '8']), _Data(), one)
        assert (same['iteration'], same['clips']) == (2, 16) and not caplog.records
        # batch 4 now: the same clip (16), iteration 4 of the new batch, said in one line
        other = _mid_epoch(saved).epoch_progress(1, parse_args(['-b', '4']), _Data(), one)
    assert (other['iteration'], other['clips']) == (4, 16)
    assert "--batch-size 4, the checkpoint's 8: epoch 1 continues at the clip it reached (16 " \
        "per process), iteration 4 of the new batch" in caplog.text
    # a checkpoint of before the clips were recorded: its iterations of its batch
    old = _mid_epoch({'iteration': 3, 'world_size': 1}, batch_size=2)
    assert old.epoch_progress(1, parse_args(['-b', '2']), _Data(), one)['clips'] == 6


def test_a_mid_epoch_resume_with_another_accumulation_says_so(caplog):
    from ops.runtime import setup_runtime
    from opts import parse_args
    saved = {'iteration': 2, 'clips': 16, 'batch_size': 8, 'world_size': 1, 'accumulate': 2}
    with caplog.at_level(logging.INFO, logger='masnet'):
        same = _mid_epoch(saved).epoch_progress(1, parse_args(['-b', '8', '--accumulate', '2']),
                                                _Data(), setup_runtime(None))
        assert same['clips'] == 16 and not caplog.records
        other = _mid_epoch(saved).epoch_progress(1, parse_args(['-b', '8', '--accumulate', '4']),
                                                 _Data(), setup_runtime(None))
    assert (other['iteration'], other['clips']) == (2, 16)
    assert "with --accumulate 2, not 4: the rest of epoch 1 gets as many clips" in caplog.text


def test_a_mid_epoch_resume_after_the_list_changed_restarts_the_epoch(caplog):
    from ops.runtime import setup_runtime
    from opts import parse_args
    saved = {'iteration': 2, 'clips': 16, 'batch_size': 8, 'world_size': 1,
             'train_list': {'count': 24, 'sha256': 'a' * 64}}
    for changed in (_Data(count=23), _Data(sha='b' * 64)):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger='masnet'):
            assert _mid_epoch(saved).epoch_progress(1, parse_args(['-b', '8']), changed,
                                                    setup_runtime(None)) is None
        assert "the training list changed since 'ckpt.pth.tar' was saved mid-epoch (24 videos" \
            in caplog.text and 'epoch 1 restarts from its first clip' in caplog.text


def test_the_training_list_identity_is_its_content():
    from ops.dataset import VideoRecord
    from ops.run_train import TrainingData
    records = [VideoRecord('a', 10, 0), VideoRecord('b', 12, 1)]
    ident = TrainingData(None, records, []).train_list_id
    assert ident['count'] == 2
    assert TrainingData(None, list(records), []).train_list_id == ident
    for changed in ([records[1], records[0]], [records[0], VideoRecord('b', 12, 2)],
                    [records[0], VideoRecord('b', 11, 1)], records[:1]):
        assert TrainingData(None, changed, []).train_list_id != ident


@pytest.mark.slow
def test_a_resume_with_another_batch_trains_the_rest_of_the_epoch(tiny_data_root, tmp_path,
                                                                  monkeypatch):
    """Stopped after 4 of 6 iterations of batch 4 (16 of 24 clips), resumed at batch 8: the
    resumed epoch trains the 8 clips left (not 0: 4 iterations x 8 would skip them all)."""
    from ops import run_train
    out, mid = str(tmp_path / 'run'), str(tmp_path / 'mid.pth.tar')
    save = run_train.save_checkpoint

    def keep_the_mid_epoch_one(state, path):
        if state.get('progress') and state['progress']['iteration'] == 4:
            save(state, mid)
        save(state, path)
    monkeypatch.setattr(run_train, 'save_checkpoint', keep_the_mid_epoch_one)
    flags = ['--epochs', '1', '--save_every_iters', '4']
    train_main.main(train_args(tiny_data_root, out, '-b', '4', *flags))
    progress = read_checkpoint(mid)['progress']
    assert (progress['clips'], progress['batch_size'], progress['train_list']['count']) == \
        (16, 4, 24)
    other = str(tmp_path / 'other')
    train_main.main(train_args(tiny_data_root, other, '-b', '8', '--resume', mid,
                               '--resume_changed', *flags))
    log = open(os.path.join(run_dir(other), 'log', 'log.txt')).read()
    assert 'epoch 0 continues at the clip it reached (16 per process), iteration 2' in log
    assert re.search(r'Epoch: \[0\] trained 8 clips', log), log


# ---- storage errors during a checkpoint save -------------------------------------------------

def test_a_file_size_limit_during_a_checkpoint_save_is_one_line_and_keeps_the_previous(tmp_path):
    """EFBIG (ulimit -f; SIGXFSZ ignored, as Python does) inside torch.save: torch reports its
    zip writer's `unexpected pos`; the run says one line naming the file, which keeps its
    previous content."""
    path = tmp_path / 'ckpt.pth.tar'
    save_checkpoint({'epoch': 1, 'state_dict': {'w': torch.ones(2)}}, str(path))
    before = path.read_bytes()
    script = (f"import torch\n"
              f"from ops.cli import exit_on_user_error\n"
              f"from ops.checkpoint import save_checkpoint\n"
              f"exit_on_user_error(lambda: save_checkpoint("
              f"{{'epoch': 2, 'state_dict': {{'w': torch.ones(200000)}}}}, {str(path)!r}))()\n")

    def limit_file_size():
        import resource
        import signal
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
    done = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                          cwd=ROOT, timeout=120, preexec_fn=limit_file_size)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == (f"-c: error: [Errno 27] cannot write '{path}': File too "
                                   f"large (the file-size limit of this process: ulimit -f)")
    assert path.read_bytes() == before and os.listdir(tmp_path) == ['ckpt.pth.tar']


def test_torch_writer_failures_without_an_os_error_are_storage_errors(tmp_path):
    from ops.files import FileWriteError, atomic_write
    path = tmp_path / 'ckpt.pth.tar'
    path.write_bytes(b'old')
    with pytest.raises(FileWriteError, match=f"cannot write '{path}': the file stopped growing "
                                             f"mid-write"):
        with atomic_write(str(path)):
            raise RuntimeError('[enforce fail at inline_container.cc:672] . unexpected pos 704 '
                               'vs 598')
    assert path.read_bytes() == b'old' and os.listdir(tmp_path) == ['ckpt.pth.tar']
    with pytest.raises(RuntimeError, match='another failure'):
        with atomic_write(str(path)):
            raise RuntimeError('another failure')


# ---- a failed start leaves no run folder -----------------------------------------------------

@pytest.mark.slow
def test_a_failed_start_leaves_no_run_folder(tiny_data_root, tmp_path, capsys):
    out = tmp_path / 'out'
    other_backbone = str(tmp_path / 'resnet18.pth.tar')
    model = TemporalModel(8, 4, 'MASNet', 'resnet18', input_size=32)
    save_checkpoint({'state_dict': model.state_dict()}, other_backbone)
    with pytest.raises(SystemExit) as stop:
        train_main.main(train_args(tiny_data_root, str(out), '--tune_from', other_backbone))
    assert stop.value.code == 2 and other_backbone in capsys.readouterr().err
    assert not out.exists()
    # a checkpoint root that cannot be made, after the log root was made and locked: the run
    # folder made there is removed again, with the folders above it that the run made
    (tmp_path / 'zfile').write_text('a file, not a folder')
    with pytest.raises(SystemExit) as stop:
        train_main.main(train_args(tiny_data_root, str(out), '--root_checkpoint',
                                   str(tmp_path / 'zfile' / 'runs')))
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1 and 'zfile' in err[0], err
    assert not out.exists()
    # a run folder that was there before (a run being resumed, say) stays
    kept = tmp_path / 'kept'
    os.makedirs(run_dir(str(kept)))
    with pytest.raises(SystemExit):
        train_main.main(train_args(tiny_data_root, str(kept), '--root_checkpoint',
                                   str(tmp_path / 'zfile' / 'runs')))
    assert os.listdir(run_dir(str(kept))) == ['run.lock']
