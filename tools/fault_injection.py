"""Fault injection: kill a short training (kill -9 or Ctrl-C) at chosen and random points, or
stop it with SIGTERM / SIGUSR1 (a cluster's preemption) mid-epoch, run the same command again,
and check that nothing was lost or is wrong.

    python tools/fault_injection.py --random 20          # the full run of docs/reliability.md

Each trial starts the training in a fresh folder, kills it once, runs the same command again
and checks that the run completes, its final weights and its best checkpoint equal an
uninterrupted run's bit for bit, it reports the uninterrupted run's best top-1, and no
temporary file is left. test.py on the uninterrupted run's best checkpoint must give that
top-1 too. Targeted trials kill inside each write window through the MASNET_FAULT hook of
ops.files.atomic_write; random trials kill at a random time, with MASNET_WRITE_DELAY widening
the write windows, and the window a kill hit is read back from the files it left. Signal
trials send SIGTERM or SIGUSR1 when the run logs a given line (an iteration's progress line,
or the epoch's train line, i.e. during validation), to the main process alone or, with loader
workers, to the whole process group as a cluster does; the run must stop with exit status 75
and one line naming the checkpoint, and the rerun must resume at the iteration it saved (no
iteration done twice).
tests/test_fault_injection.py runs a few of these trials in `make test`.
"""
import argparse
import os
import random
import re
import signal
import subprocess
import sys
import time

import torch

from ops.checkpoint import read_checkpoint
from ops.cli import HelpFormatter
from ops.files import DELAY_ENV, FAULT_ENV, TMP_PREFIX

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

LATEST, BEST = 'ckpt.pth.tar', 'ckpt.best.pth.tar'
TINY = dict(train_per_class=3, val_per_class=2, width=64, height=48, min_frames=6, max_frames=12)
# (name, MASNET_FAULT value): a kill inside every write window of a 2-epoch run (the first
# validation always writes a best checkpoint; whether the second does depends on its top-1)
TARGETED = [
    ('kill -9 inside the 1st best write', f'{BEST}:1:written:kill'),
    ('kill -9 between the best and the latest write', f'{LATEST}:1:open:kill'),
    ('kill -9 inside the 1st latest write', f'{LATEST}:1:written:kill'),
    ('Ctrl-C inside the 2nd latest write', f'{LATEST}:2:written:int'),
    ('Ctrl-C inside the 1st best write', f'{BEST}:1:written:int'),
    ('kill -9 inside the args.json write', 'args.json:1:written:kill'),
]
# (name, signal, the log line prefix after which it is sent, loader workers) of a 2-epoch run,
# 3 iterations each; with workers the signal goes to the whole process group (a cluster's way)
SIGNALLED = [
    ('SIGTERM after iteration 1 of epoch 1', 'SIGTERM', 'Epoch: [1][1/', 0),
    ('SIGUSR1 after iteration 0 of epoch 0', 'SIGUSR1', 'Epoch: [0][0/', 0),
    ('SIGTERM after iteration 2 of epoch 0', 'SIGTERM', 'Epoch: [0][2/', 0),
    ('SIGUSR1 during the validation of epoch 0', 'SIGUSR1', 'Epoch 0 train:', 0),
    ('SIGTERM to the group, -j 2, after iteration 0', 'SIGTERM', 'Epoch: [1][0/', 2),
    ('SIGUSR1 to the group, -j 2, during validation', 'SIGUSR1', 'Epoch 0 train:', 2),
]


def make_data(folder):
    """The tiny synthetic dataset of the tests below `folder`; returns the --dataset_path."""
    from ops.synthetic import ensure_synthetic
    ensure_synthetic(os.path.join(folder, 'synthetic'), **TINY)
    return folder


def train_command(data_root, out, epochs, *extra):
    """A short deterministic training: ResNet-10, 64 px, 4 segments, 3 iterations an epoch
    (`extra` flags appended)."""
    return [sys.executable, os.path.join(ROOT, 'main.py'), '--dataset', 'synthetic',
            '--dataset_path', data_root, '--arch', 'resnet10', '--num_segments', '4',
            '--input_size', '64', '--pretrain', 'none', '-b', '8', '-j', '0', '--epochs',
            str(epochs), '--lr', '0.02', '--lr_type', 'step_lr', '--lr_steps', '2', '--seed', '3',
            '--store_name', 'run', '--root_log', out, '--root_checkpoint', out, '-p', '100',
            *extra]


def run_dir(out):
    return os.path.join(out, 'synthetic', 'MASNet', 'resnet10', 'num_segments_4', 'run')


def _env(extra=None):
    env = {k: v for k, v in os.environ.items() if k not in (FAULT_ENV, DELAY_ENV)}
    env.update(extra or {})
    return env


def reported_best(output):
    """The 'best Prec@1 X' a run printed last (None if it printed none)."""
    found = re.findall(r'best Prec@1 ([0-9.]+); checkpoints in', output)
    return float(found[-1]) if found else None


def run_to_end(command, env=None):
    """Run `command` to its end; returns (exit status, stdout + stderr)."""
    proc = subprocess.run(command, cwd=ROOT, env=_env(env), capture_output=True, text=True,
                          timeout=600)
    return proc.returncode, proc.stdout + proc.stderr


def temp_files(out):
    """Leftover temporary files of atomic writes in a run's folders."""
    folder = run_dir(out)
    return [os.path.join(sub, name) for sub in ('checkpoint', 'log')
            if os.path.isdir(os.path.join(folder, sub))
            for name in os.listdir(os.path.join(folder, sub)) if name.startswith(TMP_PREFIX)]


def _epoch(path):
    return read_checkpoint(path)['epoch'] if os.path.isfile(path) else None


def window_hit(out):
    """Which window a kill hit, read from the files it left in the run folder `out`."""
    tmp = temp_files(out)
    if any(t.endswith(BEST) for t in tmp):
        return 'inside a best-checkpoint write'
    if any(t.endswith(LATEST) for t in tmp):
        return 'inside a latest-checkpoint write'
    if any(t.endswith('args.json') for t in tmp):
        return 'inside the args.json write'
    ckpt = os.path.join(run_dir(out), 'checkpoint')
    latest, best = _epoch(os.path.join(ckpt, LATEST)), _epoch(os.path.join(ckpt, BEST))
    if best is not None and (latest is None or best > latest):
        return 'between the best and the latest write'
    if latest is None:
        return 'before the first checkpoint (start-up or epoch 0)'
    return f'between checkpoints (epoch {latest} training / validation, or after the end)'


def kill_once(command, out, fault=None, delay=None, kill_after=None, sig=signal.SIGKILL):
    """Start `command`, kill it (through the MASNET_FAULT hook or after `kill_after` seconds);
    returns the window the kill hit."""
    env = {}
    if fault:
        env[FAULT_ENV] = fault
    if delay:
        env[DELAY_ENV] = str(delay)
    # a shell's background job starts with Ctrl-C ignored: restore it, as in a terminal
    proc = subprocess.Popen(command, cwd=ROOT, env=_env(env), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    if kill_after is not None:
        try:
            proc.wait(timeout=kill_after)
        except subprocess.TimeoutExpired:
            proc.send_signal(sig)
    proc.wait(timeout=600)
    return window_hit(out)


def signal_at(command, line, sig, group=False):
    """Start `command`, send it `sig` ('SIGTERM' or 'SIGUSR1') once it logs a line starting
    with `line`; returns (exit status, output). group: send it to the command's whole process
    group, its loader workers included, as a cluster signals every process of a job."""
    proc = subprocess.Popen(command, cwd=ROOT, env=_env({'PYTHONUNBUFFERED': '1'}),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=group)
    lines, sent = [], False
    for text in proc.stdout:
        lines.append(text)
        if text.startswith(line) and not sent:
            if group:
                os.killpg(proc.pid, getattr(signal, sig))
            else:
                proc.send_signal(getattr(signal, sig))
            sent = True
    return proc.wait(timeout=600), ''.join(lines)


def check_stopped(status, output, sig):
    """Problems of a run stopped by `sig`; returns (problems, (epoch, iteration) it saved at,
    iteration None when it stopped at the end of an epoch)."""
    found = re.findall(rf'^{sig} at (?:epoch (\d+) iteration (\d+)|the end of epoch (\d+)): '
                       rf'saved (.*); rerun the same command to resume$', output, re.M)
    problems = []
    if status != 75:
        problems.append(f'exit status {status}, want 75')
    if len(found) != 1 or 'Traceback' in output:
        problems.append(f'not one stop line: {output.strip().splitlines()[-3:]}')
        return problems, None
    epoch, iteration, end_epoch, _ = found[0]
    if end_epoch:
        return problems, (int(end_epoch) + 1, None)
    return problems, (int(epoch), int(iteration))


def check_recovered(command, out, reference, saved_at=None):
    """Run `command` again and compare with the uninterrupted `reference`; returns problems.
    saved_at: the (epoch, iteration) a stop signal saved, where the rerun (logging every
    iteration: -p 1) must resume."""
    status, output = run_to_end(command)
    if status != 0:
        return [f'the rerun failed ({status}): {output.strip().splitlines()[-1:]}']
    problems = []
    if saved_at is not None and saved_at[1] is not None:
        epoch, iteration = saved_at
        if not re.search(rf'at epoch {epoch} iteration {iteration} ', output):
            problems.append(f'the rerun did not resume at epoch {epoch} iteration {iteration}')
        # the first iteration the rerun does: the saved one, or the next epoch's first when
        # the signal came after the last iteration of an epoch
        first = re.search(r'^Epoch: \[(\d+)\]\[(\d+)/(\d+)\]', output, re.M)
        if first:
            done, length = (int(first.group(1)), int(first.group(2))), int(first.group(3))
            if done not in ((epoch, iteration), (epoch + 1, 0) if iteration == length else None):
                problems.append(f'the rerun started with iteration {done[1]} of epoch '
                                f'{done[0]}, not {iteration} of {epoch}')
    ckpt = os.path.join(run_dir(out), 'checkpoint')
    for name in (LATEST, BEST):
        got, want = read_checkpoint(os.path.join(ckpt, name)), reference[name]
        if (got['epoch'], got.get('prec1')) != (want['epoch'], want.get('prec1')):
            problems.append(f"{name}: epoch/top-1 {got['epoch']}/{got.get('prec1')}, "
                            f"want {want['epoch']}/{want.get('prec1')}")
        elif not all(torch.equal(v, want['state_dict'][k]) for k, v in got['state_dict'].items()):
            problems.append(f'{name}: weights differ from the uninterrupted run')
    if reported_best(output) != reference['reported']:
        problems.append(f"reported best {reported_best(output)}, want {reference['reported']}")
    if temp_files(out):
        problems.append(f'temporary files left: {temp_files(out)}')
    return problems


def reference_run(data_root, out, epochs):
    """The uninterrupted run: its checkpoints and reported best."""
    status, output = run_to_end(train_command(data_root, out, epochs))
    if status != 0:
        raise RuntimeError(f'the uninterrupted run failed: {output[-2000:]}')
    ckpt = os.path.join(run_dir(out), 'checkpoint')
    reference = {name: read_checkpoint(os.path.join(ckpt, name)) for name in (LATEST, BEST)}
    reference['reported'] = reported_best(output)
    return reference


def evaluate_best(data_root, out):
    """test.py's top-1 of a run's best checkpoint (1 crop, 1 clip: the validation's views)."""
    status, output = run_to_end([sys.executable, os.path.join(ROOT, 'test.py'), '--dataset',
                                 'synthetic', '--dataset_path', data_root, '--weights',
                                 os.path.join(run_dir(out), 'checkpoint', BEST), '-j', '0',
                                 '--batch_size', '4', '--save_scores', ''])
    found = re.findall(r'Prec@1 ([0-9.]+)', output)
    if status != 0 or not found:
        raise RuntimeError(f'test.py failed: {output[-2000:]}')
    return float(found[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(formatter_class=HelpFormatter,
                                     description=__doc__.split('\n\n')[0])
    parser.add_argument('--random', type=int, default=20, help='random-time kills')
    parser.add_argument('--epochs', type=int, default=2)
    parser.add_argument('--delay', type=float, default=0.3,
                        help='seconds each write pauses before its rename in the random trials')
    parser.add_argument('--seed', type=int, default=0,
                        help='seed of the random kills (signal, time); the training runs '
                             'use --seed 3')
    parser.add_argument('--work', default=os.path.join('experiments', 'fault_injection'))
    parser.add_argument('--signals_only', action='store_true',
                        help='only the SIGTERM / SIGUSR1 trials')
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    data_root = make_data(os.path.join(args.work, 'data'))

    start = time.time()
    ref_out = os.path.join(args.work, 'reference')
    reference = reference_run(data_root, ref_out, args.epochs)
    duration = time.time() - start
    top1 = evaluate_best(data_root, ref_out)
    print(f"uninterrupted run: {duration:.1f} s, reported best {reference['reported']:.3f}, "
          f"test.py on ckpt.best.pth.tar {top1:.3f}")
    failures = int(top1 != reference['reported'])

    for k, (name, sig, line, workers) in enumerate(SIGNALLED):
        out = os.path.join(args.work, f'signal{k:02d}')
        command = train_command(data_root, out, args.epochs, '-p', '1', '-j', str(workers))
        problems, saved_at = check_stopped(*signal_at(command, line, sig, group=workers > 0), sig)
        if saved_at is not None:
            problems += check_recovered(command, out, reference, saved_at)
        where = ('-' if saved_at is None else f'end of epoch {saved_at[0] - 1}'
                 if saved_at[1] is None
                 else f'epoch {saved_at[0]} iteration {saved_at[1]}')
        failures += bool(problems)
        print(f"{name:48s} saved at: {where:26s} {'OK' if not problems else '; '.join(problems)}")
    if args.signals_only:
        print(f'{len(SIGNALLED)} signal points, {failures} failure(s)')
        return 1 if failures else 0

    trials = [(name, dict(fault=fault)) for name, fault in TARGETED]
    for _ in range(args.random):
        sig = rng.choice([signal.SIGKILL, signal.SIGINT])
        when = rng.uniform(0, duration + 4 * args.epochs * args.delay)
        trials.append((f"{'kill -9' if sig == signal.SIGKILL else 'Ctrl-C'} at {when:.1f} s",
                       dict(kill_after=when, sig=sig, delay=args.delay)))
    windows = {}
    for k, (name, how) in enumerate(trials):
        out = os.path.join(args.work, f'trial{k:02d}')
        command = train_command(data_root, out, args.epochs)
        window = kill_once(command, out, **how)
        problems = check_recovered(command, out, reference)
        windows[window] = windows.get(window, 0) + 1
        failures += bool(problems)
        print(f"{name:48s} hit: {window:62s} {'OK' if not problems else '; '.join(problems)}")
    print(f'{len(SIGNALLED)} signal points and {len(trials)} kill points ({len(TARGETED)} '
          f'targeted, {args.random} random), {failures} failure(s); windows hit:')
    for window, count in sorted(windows.items()):
        print(f'  {count:3d}  {window}')
    return 1 if failures else 0


if __name__ == '__main__':
    sys.exit(main())
