"""torchrun with 2 CPU processes (gloo): trains, and validates to the same numbers as 1 process."""
import os
import re
import subprocess
import sys

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
