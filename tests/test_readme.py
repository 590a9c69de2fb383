"""Every command of README.md works as written.

- every ``python``/``torchrun`` command in a code block parses with its entry point's flags,
  every tool flag exists, every ``make`` target exists;
- the synthetic tour runs verbatim, in order, in a fresh folder;
- the seed README's training and testing commands run on a tiny dataset laid out like
  Something-Something V1 at ``../../datasets/`` (fake ImageNet weights in the torch hub cache),
  the training one with ``--epochs 1`` instead of 70.
"""
import os
import re
import shlex
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import average_scores
import CAM
import opts
import test as test_entry
from archs.resnet import IMAGENET_WEIGHT_FILES, PLAIN_BLOCKS, build_resnet
from ops.scores import load_scores
from ops.synthetic import SYNTHETIC_CLASSES, ensure_synthetic
from tests.conftest import ROOT

README = os.path.join(ROOT, 'README.md')
PARSERS = {'main.py': opts.build_parser, 'test.py': test_entry.build_parser,
           'average_scores.py': average_scores.build_parser, 'CAM.py': CAM.build_parser}
COMMAND_START = ('python ', 'torchrun ', 'make ')


def readme_commands():
    """[(section heading, command)] for the commands in the README's code blocks, in order."""
    commands, section, block = [], None, None
    with open(README) as f:
        for line in f:
            if block is None and line.startswith('#'):
                section = line.strip('# \n')
            if line.startswith('```'):
                if block is not None:
                    joined = '\n'.join(block).replace('\\\n', ' ')
                    commands += [(section, c.strip()) for c in joined.splitlines()
                                 if c.strip().startswith(COMMAND_START)]
                block = None if block is not None else []
            elif block is not None:
                block.append(line.rstrip('\n'))
    return commands


def section_commands(section):
    return [c for s, c in readme_commands() if s == section]


def run_command(command, cwd, env=None):
    """Run a README command: `python` is this interpreter, scripts are the repository's."""
    argv = shlex.split(command, comments=True)
    assert argv[0] == 'python', command
    argv = [sys.executable, os.path.join(ROOT, argv[1])] + argv[2:]
    res = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=600,
                         env={**os.environ, **(env or {})})
    assert res.returncode == 0, f'{command}\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}'
    return res


def test_readme_has_the_expected_commands():
    sections = {s for s, _ in readme_commands()}
    assert {'A tour on the synthetic dataset', 'Training', 'Testing', 'Visualization'} <= sections
    assert len(section_commands('Testing')) == 4


@pytest.mark.parametrize('section,command', readme_commands())
def test_command_flags_exist(section, command):
    argv = shlex.split(command, comments=True)
    if argv[0] == 'make':
        with open(os.path.join(ROOT, 'Makefile')) as f:
            makefile = f.read()
        for arg in argv[1:]:
            if '=' in arg:  # a variable the Makefile offers
                assert re.search(rf'^{arg.split("=")[0]}\s*\?=', makefile, re.M), command
            else:
                assert re.search(rf'^{arg}:', makefile, re.M), command
        return
    if argv[0] == 'torchrun':
        argv = argv[next(i for i, a in enumerate(argv) if a.endswith('.py')) - 1:]
    script, args = argv[1], argv[2:]
    assert os.path.isfile(os.path.join(ROOT, script)), command
    if script in PARSERS:
        PARSERS[script]().parse_args(args)  # exits (fails the test) on an unknown flag
    else:
        usage = subprocess.run([sys.executable, os.path.join(ROOT, script), '--help'],
                               capture_output=True, text=True, check=True).stdout
        for flag in (a for a in args if a.startswith('--')):
            assert flag in usage, f'{flag} of {command} not in {script} --help'


def git_status(folder):
    return subprocess.run(['git', 'status', '--porcelain', '--untracked-files=all'], cwd=folder,
                          capture_output=True, text=True, check=True).stdout


def written_into_repository(before):
    """Lines of the repository's git status that are new since `before`: untracked files, and
    changes of the tracked figures (edits of code during the run are someone's work, not ours)."""
    new = set(git_status(ROOT).splitlines()) - set(before.splitlines())
    return sorted(line for line in new if line.startswith('??') or 'imgs/' in line)


def make_checkout(folder):
    """A git repository in `folder` with the project's .gitignore and a tracked figure, as a
    checkout where the README's commands are run."""
    (folder / 'imgs').mkdir()
    shutil.copy(os.path.join(ROOT, '.gitignore'), folder / '.gitignore')
    shutil.copy(os.path.join(ROOT, 'imgs', 'CAM_result.png'), folder / 'imgs' / 'CAM_result.png')
    git = ['git', '-c', 'user.name=test', '-c', 'user.email=test@localhost']
    for command in (['init', '-q'], ['add', '.'], ['commit', '-q', '-m', 'checkout']):
        subprocess.run(git + command, cwd=folder, check=True, capture_output=True)


def test_synthetic_tour_runs_as_written(tmp_path):
    make_checkout(tmp_path)
    repo_status = git_status(ROOT)
    results = [run_command(c, cwd=tmp_path)
               for c in section_commands('A tour on the synthetic dataset')]
    run = tmp_path / 'experiments/synthetic/MASNet/resnet10/num_segments_8/demo'
    assert (run / 'checkpoint/ckpt.best.pth.tar').is_file()
    assert (run / 'log/log.txt').is_file() and any((run / 'tensorboardX').iterdir())
    scores = sorted(f for f in os.listdir(tmp_path / 'score') if f.endswith('.npz'))
    assert scores == ['synthetic_MASNet_resnet10_8f_1crop_1clip_64px.npz',
                      'synthetic_MASNet_resnet10_8f_3crop_2clip_73px.npz']  # full_res: 64*256/224
    assert 'ensemble' in results[3].stdout
    assert (tmp_path / 'outputs' / 'cam.png').stat().st_size > 10000
    assert '26.07 M params, 33.55 GFLOPs' in results[5].stdout
    # the commands that use the tour's model, from the same folder
    for section in ('Prediction', 'Streams and long videos', 'Visualization'):
        for command in section_commands(section):
            run_command(command, cwd=tmp_path)
    export, = [c for c in section_commands('Export') if 'tools/export.py' in c]
    run_command(export, cwd=tmp_path)
    assert (tmp_path / 'outputs' / 'masnet_demo.onnx').is_file()
    assert (tmp_path / 'outputs' / 'CAM_result.png').is_file()
    # no tracked file changed, no file written outside the ignored folders
    assert git_status(tmp_path) == ''
    assert written_into_repository(repo_status) == []


def make_something_v1(datasets):
    """A 3-video dataset in the somethingv1 layout (174 classes) below `datasets`."""
    synthetic = datasets / 'frames_source'
    ensure_synthetic(str(synthetic), train_per_class=1, val_per_class=1, width=64, height=48,
                     min_frames=10, max_frames=12)
    root = datasets / 'somethingv1'
    root.mkdir()
    names = SYNTHETIC_CLASSES + [f'Placeholder action {i}' for i in range(174 - 8)]
    (root / 'category.txt').write_text('\n'.join(names) + '\n')
    train = (synthetic / 'train.txt').read_text().splitlines()
    val = (synthetic / 'valid.txt').read_text().splitlines()
    (root / 'train.txt').write_text('\n'.join(train[:2]) + '\n')
    (root / 'valid.txt').write_text(val[0] + '\n')
    (root / '20bn-something-something-v1').symlink_to(synthetic / 'frames')


def make_imagenet_cache(torch_home):
    """torchvision-named random ResNet-50 weights where --pretrain imagenet looks for them."""
    folder = torch_home / 'hub' / 'checkpoints'
    folder.mkdir(parents=True)
    torch.manual_seed(0)
    weights = build_resnet('resnet50', PLAIN_BLOCKS, bias=False).state_dict()
    torch.save(weights, folder / IMAGENET_WEIGHT_FILES['resnet50'])


def test_seed_commands_run_on_a_something_v1_layout(tmp_path):
    datasets, cwd = tmp_path / 'datasets', tmp_path / 'home' / 'repo'
    datasets.mkdir()
    cwd.mkdir(parents=True)
    make_something_v1(datasets)
    make_imagenet_cache(tmp_path / 'torch_home')
    env = {'TORCH_HOME': str(tmp_path / 'torch_home')}

    train, = section_commands('Training')
    assert '--epochs 70' in train
    res = run_command(train.replace('--epochs 70', '--epochs 1'), cwd, env)
    assert 'backbone tensors from' in res.stdout  # the backbone was initialised from the cache
    run = cwd / 'experiments/somethingv1/MASNet/resnet50/num_segments_8/MAS_Net[v1_8]'
    shutil.copy(run / 'checkpoint/ckpt.best.pth.tar', cwd / 'your.pth.tar')

    *tests, ensemble = section_commands('Testing')
    for command in tests:
        run_command(command, cwd, env)
    files = sorted((cwd / 'score').glob('*.npz'))
    assert [f.name for f in files] == [
        'somethingv1_MASNet_resnet50_8f_1crop_1clip_224px.npz',
        'somethingv1_MASNet_resnet50_8f_3crop_10clip_256px.npz',
        'somethingv1_MASNet_resnet50_8f_3crop_2clip_256px.npz']
    assert ensemble == 'python average_scores.py'
    out = run_command(ensemble, cwd, env).stdout
    mean = np.mean([load_scores(str(f))['scores'] for f in files], axis=0)
    expected_top1 = 100.0 * float(mean.argmax(1)[0] == load_scores(str(files[0]))['labels'][0])
    assert re.search(rf'ensemble\s+{expected_top1:.2f}', out), out
