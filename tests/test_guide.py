"""docs/contributing.md's walkthrough done through its documented steps only: an lr schedule
registered at run time sets the lr per iteration, a seeded sampling reaches test.py's choices
and the view protocol, and MAM's blend edited as the guide says reaches every form."""
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

import opts
import test as test_main
from ops import dataset, optim
from tests.conftest import ROOT


def guide_blocks(heading):
    """The python code blocks of the walkthrough's subsection `heading`, dedented, in order."""
    text = open(os.path.join(ROOT, 'docs', 'contributing.md')).read()
    section = re.split(r'\n##+ ', text.split(f'### {heading}\n', 1)[1], 1)[0]
    blocks = [b.split('```', 1)[0] for b in re.split(r'```python\n', section)[1:]]
    return [re.sub(r'(?m)^   ', '', b) if re.match(r'   \S', b) else b
            for b in blocks]


@pytest.fixture
def poly_lr():
    block, = guide_blocks('Adding an lr schedule')
    exec(compile(block, 'docs/contributing.md', 'exec'), {'lr_schedule': optim.lr_schedule})
    yield optim.LR_SCHEDULES['poly_lr']
    optim.LR_SCHEDULES.pop('poly_lr')


def test_a_schedule_registered_as_documented_changes_within_an_epoch(poly_lr):
    args = opts.parse_args(['--lr_type', 'poly_lr', '--epochs', '2', '--lr', '0.1'])
    assert args.lr_type == 'poly_lr' and 'lr_type' in opts.recipe_flags()
    lrs = [optim.lr_at_epoch('poly_lr', 0.1, i / 4, epochs=2) for i in range(8)]
    assert lrs[:2] == pytest.approx([0.1 * 1e-3 / 0.5, 0.1 * 0.251 / 0.5])
    assert lrs[2] == pytest.approx(0.1)
    assert lrs[5] == pytest.approx(0.1 * (1 - 0.75 / 1.5) ** 0.9)
    assert all(a > b for a, b in zip(lrs[2:], lrs[3:]))


@pytest.fixture
def jitter():
    block, = guide_blocks('Add an evaluation sampling')
    exec(compile(block, 'docs/contributing.md', 'exec'), vars(dataset).copy())
    yield dataset.TEST_SAMPLINGS['jitter']
    dataset.TEST_SAMPLINGS.pop('jitter')


def test_a_sampling_registered_as_documented_reaches_test_py_and_is_seeded(jitter):
    action = next(a for a in test_main.build_parser()._actions
                  if '--test_sampling' in a.option_strings)
    assert 'jitter' in action.choices
    views = dataset.ViewProtocol.from_flags(test_sampling='jitter', dense_sample_num=2,
                                            test_seed=3)
    first = views.sample_indices(40, 8, key='video_a')
    assert np.array_equal(first, views.sample_indices(40, 8, key='video_a'))
    center = dataset.sample_val_indices(40, 8)
    assert first.shape == (16,) and np.abs(first.reshape(2, 8) - center).max() <= 1
    assert not np.array_equal(first, views.sample_indices(40, 8, key='video_b'))
    assert views.settings()['sampling'] == 'jitter'


EDITED_MAM_CHECK = """
import torch
from ops.MASNet import MAM
from ops.models import build_model
mam = MAM(64, 4)
assert mam.direction == 'previous' and 'direction' in MAM.hyperparameters
b = torch.arange(4.).view(1, 4, 1, 1, 1)
assert torch.allclose(mam.accumulate_frames(b).flatten(), torch.tensor([0, 2 / 3, 5 / 3, 8 / 3]))
model = build_model(3, 4, 'MASNet', 'resnet10', pretrain='none', input_size=32)
model.train()
model(torch.randn(2, 12, 32, 32)).sum().backward()
print('ok')
"""


@pytest.mark.slow
def test_mam_edited_as_the_guide_says_trains_and_passes_the_form_check(tmp_path):
    copy = tmp_path / 'repo'
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns(
        '.git', '.venv', 'experiments', 'score', 'data', '__pycache__', '.pytest_cache'))
    attributes, blend = guide_blocks("Changing a MAS module's formula")
    path = copy / 'ops' / 'MASNet.py'
    code = path.read_text()
    lines = attributes.strip('\n').splitlines()
    code = code.replace("    hyperparameters = ('alpha', 'reduction')\n", lines[0] + '\n', 1)
    code = code.replace("    def __init__(self, channels, num_segments, reduction=64, alpha=0.5):",
                        lines[2].replace("'next'", "'previous'"), 1)
    code = code.replace("        self.reduction = reduction\n        reduced",
                        "        self.reduction = reduction\n" + lines[4] + "\n        reduced", 1)
    start = code.index('    def accumulate_frames(self, b):')
    end = code.index('    def accumulate(self, x', start)
    code = code[:start] + blend.rstrip('\n') + '\n\n' + code[end:]
    path.write_text(code)
    env = dict(os.environ, PYTHONPATH=str(copy))
    result = subprocess.run([sys.executable, '-c', EDITED_MAM_CHECK], cwd=copy, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == 'ok', result.stderr[-2000:]
