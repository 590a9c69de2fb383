"""torchrun with 2 CPU processes (gloo): trains, validates to the same numbers as 1 process,
stops on SIGTERM with a checkpoint it resumes bit for bit, and fails in one line (a stopped
rank, one rank's error); two "nodes" on 127.0.0.1."""
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT, free_port


def run(cmd, env_extra=None):
    env = dict(os.environ, OMP_NUM_THREADS='1', **(env_extra or {}))
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=400, env=env)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    return res.stdout + res.stderr


def val_line(output):
    found = re.findall(r'Epoch 0 val: Loss ([\d.]+) Prec@1 ([\d.]+) Prec@5 ([\d.]+)', output)
    assert found, output[-2000:]
    return tuple(float(v) for v in found[-1])


@pytest.mark.distributed
def test_torchrun_two_processes_match_one(tiny_data_root, tmp_path):
    common = ['--dataset', 'synthetic', '--dataset_path', tiny_data_root, '--arch', 'resnet10',
              '--num_segments', '4', '--input_size', '32', '--pretrain', 'none', '-b', '8',
              '-j', '0', '--epochs', '1', '--lr', '0.01', '--lr_type', 'cos_lr', '--seed', '1',
              '--root_log', str(tmp_path), '--root_checkpoint', str(tmp_path)]
    out = run([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2',
               '--master_port', str(free_port()), 'main.py', *common, '--store_name', 'ddp'])
    ddp_val = val_line(out)
    ckpt = os.path.join(tmp_path, 'synthetic', 'MASNet', 'resnet10', 'num_segments_4', 'ddp',
                        'checkpoint', 'ckpt.pth.tar')
    assert os.path.isfile(ckpt)

    # one process evaluating the checkpoint the two processes wrote: same loss and accuracy
    single = run([sys.executable, 'main.py', *common, '--store_name', 'single', '--evaluate',
                  '--resume', ckpt])
    found = re.findall(r'Testing Results: Prec@1 ([\d.]+) Prec@5 ([\d.]+) Loss ([\d.]+)', single)
    assert found, single[-2000:]
    prec1, prec5, loss = (float(v) for v in found[-1])
    assert (prec1, prec5) == pytest.approx(ddp_val[1:], abs=1e-3)
    assert loss == pytest.approx(ddp_val[0], abs=1e-4)


def common_flags(data_root, out, *extra):
    return ['--dataset', 'synthetic', '--dataset_path', data_root, '--arch', 'resnet10',
            '--num_segments', '4', '--input_size', '32', '--pretrain', 'none', '-b', '8', '-j',
            '0', '--epochs', '1', '--lr', '0.01', '--lr_type', 'cos_lr', '--seed', '1',
            '--root_log', out, '--root_checkpoint', out, '-p', '1', *extra]


def torchrun(*args):
    return [sys.executable, os.path.join(ROOT, 'tools', 'torchrun.py'), '--nproc_per_node', '2',
            '--master_port', str(free_port()), *args]


def start(cmd):
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1')
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def weights(out, store_name):
    from ops.checkpoint import read_checkpoint
    return read_checkpoint(os.path.join(out, 'synthetic', 'MASNet', 'resnet10', 'num_segments_4',
                                        store_name, 'checkpoint', 'ckpt.pth.tar'))


def worker_pid(parent, rank):
    """The pid of the torchrun worker of `rank` under the launcher `parent`."""
    for pid in filter(str.isdigit, os.listdir('/proc')):
        try:
            with open(f'/proc/{pid}/stat') as f:
                ppid = int(f.read().rsplit(')', 1)[1].split()[1])
            with open(f'/proc/{pid}/environ', 'rb') as f:
                env = f.read().split(b'\0')
        except OSError:
            continue
        if ppid == parent and f'RANK={rank}'.encode() in env:
            return int(pid)
    raise AssertionError(f'no worker of rank {rank} under {parent}')


@pytest.mark.distributed
def test_torchrun_sigterm_saves_mid_epoch_and_resumes_bit_for_bit(tiny_data_root, tmp_path):
    import torch
    out = str(tmp_path)
    run(torchrun('main.py', *common_flags(tiny_data_root, out, '--store_name', 'whole')))
    command = torchrun('main.py', *common_flags(tiny_data_root, out, '--store_name', 'cut'))
    proc, lines = start(command), []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith('Epoch: [0][0/') and proc.returncode is None:
            proc.send_signal(signal.SIGTERM)  # to torchrun, which forwards it to both ranks
    output = ''.join(lines)
    assert proc.wait() == 75, output[-3000:]
    assert 'Traceback' not in output, output[-3000:]
    stops = re.findall(r'^SIGTERM at epoch 0 iteration (\d+): saved .*ckpt.pth.tar; rerun the '
                       r'same command to resume$', output, re.M)
    assert len(stops) == 1 and stops[0] in ('1', '2', '3'), output[-3000:]
    assert len(re.findall(r'^torchrun: SIGTERM: workers stopped', output, re.M)) == 1
    assert weights(out, 'cut')['progress']['iteration'] == int(stops[0])

    resumed = run(command)
    assert f'at epoch 0 iteration {stops[0]} ' in resumed
    got, want = weights(out, 'cut'), weights(out, 'whole')
    assert got['epoch'] == want['epoch'] == 1 and 'progress' not in got
    assert all(torch.equal(v, want['state_dict'][k]) for k, v in got['state_dict'].items())


@pytest.mark.distributed
def test_a_stopped_rank_ends_the_run_in_one_line_within_the_timeout(tiny_data_root, tmp_path):
    proc = start(torchrun('main.py', *common_flags(tiny_data_root, str(tmp_path), '--epochs',
                                                   '3', '--dist_timeout', '5')))
    stopped, lines = None, []
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith('Epoch: [0][0/') and stopped is None:
                stopped = worker_pid(proc.pid, 1)
                os.kill(stopped, signal.SIGSTOP)
                began = time.time()
        status = proc.wait()
    finally:
        if stopped is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(stopped, signal.SIGKILL)
    output = ''.join(lines)
    errors = [ln for ln in output.splitlines() if 'error:' in ln]
    assert status == 1 and 'Traceback' not in output, output[-3000:]
    assert len(errors) == 1 and '--dist_timeout' in errors[0] and 'for 5 s' in errors[0], errors
    # 5 s of timeout, then torchrun's 30 s for the stopped worker before it kills it
    assert time.time() - began < 5 + 30 + 60


@pytest.mark.distributed
def test_one_ranks_error_is_one_line_from_rank_0(tmp_path):
    script = tmp_path / 'fail.py'
    script.write_text(f'''import sys
sys.path.insert(0, {ROOT!r})
from ops.dataset import DataError
from ops.runtime import all_reduce_sum, one_line_failures, setup_runtime
from ops.cli import exit_on_user_error


@exit_on_user_error
def main():
    runtime = setup_runtime(timeout=60)
    with one_line_failures(runtime):
        if runtime.rank == 1:
            raise DataError("list.txt:3: label 9 is not in [0, 8)")
        all_reduce_sum([1.0], runtime)


main()
''')
    proc = start(torchrun(str(script)))
    output = proc.communicate(timeout=200)[0]
    errors = [ln for ln in output.splitlines() if 'error:' in ln]
    assert proc.returncode == 1 and 'Traceback' not in output, output[-3000:]
    assert errors == ['fail.py: error: rank 1: list.txt:3: label 9 is not in [0, 8)'], output


@pytest.mark.distributed
def test_an_error_before_the_run_folder_is_one_line_under_torchrun(tiny_data_root, tmp_path):
    """Every process fails the same check (a missing --pretrain file): rank 0 says it once."""
    missing = str(tmp_path / 'missing.pth')
    proc = start(torchrun('main.py', *common_flags(tiny_data_root, str(tmp_path / 'runs'),
                                                   '--pretrain', missing)))
    output = proc.communicate(timeout=200)[0]
    errors = [ln for ln in output.splitlines() if 'error:' in ln]
    assert proc.returncode == 1 and 'Traceback' not in output, output[-3000:]
    assert len(errors) == 1 and missing in errors[0], output[-3000:]
    assert not (tmp_path / 'runs').exists()


@pytest.mark.distributed
def test_two_nodes_on_one_machine(tiny_data_root, tmp_path):
    port = str(free_port())
    procs = [start([sys.executable, '-m', 'torch.distributed.run', '--nnodes', '2',
                    '--node_rank', str(node), '--nproc_per_node', '1', '--master_addr',
                    '127.0.0.1', '--master_port', port, 'main.py',
                    *common_flags(tiny_data_root, str(tmp_path), '--store_name', 'nodes')])
             for node in (0, 1)]
    outputs = [p.communicate(timeout=400)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    assert '2 process(es)' in outputs[0] and weights(str(tmp_path), 'nodes')['epoch'] == 1


SLURM_SCRIPT = os.path.join(ROOT, 'scripts', 'slurm_train.sh')


def test_slurm_script_builds_a_command_torchrun_and_main_py_accept(tiny_data_root, tmp_path):
    import shlex

    from torch.distributed.run import parse_args as torchrun_args

    from opts import parse_args
    assert subprocess.run(['bash', '-n', SLURM_SCRIPT]).returncode == 0
    flags = common_flags(tiny_data_root, str(tmp_path), '--store_name', 'my run')
    env = dict(os.environ, DRY_RUN='1', SLURM_NNODES='2', SLURM_GPUS_ON_NODE='4',
               SLURM_JOB_ID='1234')
    env.pop('SLURM_JOB_NODELIST', None)
    printed = subprocess.run(['bash', SLURM_SCRIPT, *flags], capture_output=True, text=True,
                             env=env, check=True).stdout
    words = shlex.split(printed)
    assert words[0] == 'srun' and 'tools/torchrun.py' in words
    launcher = words[words.index('tools/torchrun.py') + 1:]
    parsed = torchrun_args(launcher)
    assert (parsed.nnodes, parsed.nproc_per_node, parsed.rdzv_endpoint) == \
        ('2', '4', '127.0.0.1:29734')
    assert parsed.training_script == 'main.py' and parsed.training_script_args == flags
    assert parse_args(parsed.training_script_args).store_name == 'my run'


@pytest.mark.distributed
def test_slurm_script_requeues_a_run_stopped_by_sigusr1(tiny_data_root, tmp_path):
    """The script's trap, its srun (here a stand-in running the command) and the requeue."""
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    (bin_dir / 'srun').write_text('#!/bin/bash\nwhile [[ $1 == --* ]]; do shift; done\n'
                                  'exec "$@"\n')
    (bin_dir / 'scontrol').write_text(f'#!/bin/bash\necho "$@" >> {tmp_path}/scontrol.log\n')
    for name in ('srun', 'scontrol'):
        os.chmod(bin_dir / name, 0o755)
    while True:  # a job id whose port (29500 + id % 1000) is free
        job = free_port() % 1000
        with socket.socket() as sock:
            if sock.connect_ex(('127.0.0.1', 29500 + job)) != 0:
                break
    env = dict(os.environ, PATH=f'{bin_dir}:{os.environ["PATH"]}', SLURM_JOB_ID=str(job),
               SLURM_NNODES='1', SLURM_GPUS_ON_NODE='2', PYTHON=sys.executable,
               OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1')
    env.pop('SLURM_JOB_NODELIST', None)
    proc = subprocess.Popen(['bash', SLURM_SCRIPT, *common_flags(
        tiny_data_root, str(tmp_path), '--store_name', 'slurm')], cwd=ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith('Epoch: [0][0/') and proc.returncode is None:
            proc.send_signal(signal.SIGUSR1)  # what --signal=B:USR1@120 sends the script
    output = ''.join(lines)
    assert proc.wait() == 75 and 'Traceback' not in output, output[-3000:]
    assert re.search(r'^SIGUSR1 at epoch 0 iteration \d: saved', output, re.M), output[-3000:]
    with open(tmp_path / 'scontrol.log') as f:
        assert f.read() == f'requeue {job}\n'
    assert weights(str(tmp_path), 'slurm')['progress']['iteration'] >= 1
