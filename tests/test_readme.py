"""Every command of README.md and docs/*.md works as written, and every link of theirs leads
somewhere.

- every ``python``/``torchrun``/``make``/``bash``/``sbatch`` command in a code block of the
  README or a docs page parses with its entry point's flags, every tool flag exists, every
  ``make`` target and variable exists, every script exists;
- the README's synthetic tour runs verbatim, in order, in a fresh folder, followed by the
  commands of docs/prediction.md and the README that use its model; every other command of the
  docs that uses the tour's model or data is one of those (so it runs too);
- the seed README's training and testing commands run on a tiny dataset laid out like
  Something-Something V1 at ``../../datasets/`` (fake ImageNet weights in the torch hub cache),
  the training one with ``--epochs 1`` instead of 70;
- the README stays short, and every relative link and anchor of the README and docs/ exists.
"""
import functools
import glob
import json
import os
import re
import shlex
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch.distributed.run import get_args_parser as torchrun_parser

import average_scores
import CAM
import opts
import test as test_entry
from archs.resnet import IMAGENET_WEIGHT_FILES, PLAIN_BLOCKS, build_resnet
from ops.scores import load_scores
from ops.synthetic import SYNTHETIC_CLASSES, ensure_synthetic
from tests.conftest import ROOT

README = 'README.md'
PAGES = [README] + sorted(os.path.relpath(p, ROOT)
                          for p in glob.glob(os.path.join(ROOT, 'docs', '*.md')))
MAX_README_LINES = 400
# docs pages written on other branches, linked before they land; empty this set once they have
PENDING_PAGES = {'docs/fused_block.md'}
PARSERS = {'main.py': opts.build_parser, 'test.py': test_entry.build_parser,
           'average_scores.py': average_scores.build_parser, 'CAM.py': CAM.build_parser}
# shell scripts that hand their arguments to main.py: script -> arguments before main.py's flags
MAIN_PY_SCRIPTS = {'scripts/train.sh': 1, 'scripts/slurm_train.sh': 0}
COMMAND = re.compile(r'^(\w+=\S+ )*(python|torchrun|make|bash|sbatch) ')
TOUR = 'A tour on the synthetic dataset'
TOUR_RUN = 'experiments/synthetic/MASNet/resnet10/num_segments_8/demo/'
# the tour test runs these (page, section)s after the tour, from the same folder
AFTER_TOUR = [('docs/prediction.md', 'Prediction'),
              ('docs/prediction.md', 'Streams and long videos'),
              ('docs/prediction.md', 'Export'),
              ('docs/testing.md', 'Does the model use time?'),
              (README, 'Visualization')]


def markdown(page):
    """(kind, section, text) for a page's lines outside code blocks ('line') and its code
    blocks ('code', the block's lines joined), in order; section is the heading above."""
    items, section, block = [], None, None
    with open(os.path.join(ROOT, page)) as f:
        for line in f:
            line = line.rstrip('\n')
            if line.startswith('```'):
                if block is not None:
                    items.append(('code', section, '\n'.join(block)))
                block = None if block is not None else []
            elif block is not None:
                block.append(line)
            else:
                if line.startswith('#'):
                    section = line.strip('# ')
                items.append(('line', section, line))
    return items


def page_commands(page):
    """[(section heading, command)] for the commands in a page's code blocks, in order."""
    commands = []
    for kind, section, text in markdown(page):
        if kind == 'code':
            joined = text.replace('\\\n', ' ')
            commands += [(section, c.strip()) for c in joined.splitlines()
                         if COMMAND.match(c.strip())]
    return commands


def section_commands(section, page=README):
    return [c for s, c in page_commands(page) if s == section]


def all_commands():
    return [(page, section, command) for page in PAGES for section, command in page_commands(page)]


def tour_commands():
    """The commands the tour test runs, in order."""
    return section_commands(TOUR) + [c for page, section in AFTER_TOUR
                                     for c in section_commands(section, page)]


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
    sections = {s for s, _ in page_commands(README)}
    assert {TOUR, 'Training', 'Testing', 'Visualization'} <= sections
    assert len(section_commands('Testing')) == 4
    for page, section in AFTER_TOUR:
        assert section_commands(section, page), (page, section)


def test_readme_is_short():
    with open(os.path.join(ROOT, README)) as f:
        assert len(f.readlines()) <= MAX_README_LINES


# prints {script: its --help} for the scripts given, in one process (torch imported once)
HELP_PRINTER = """
import contextlib, io, json, runpy, sys
helps = {}
for script in sys.argv[1:]:
    sys.argv, out = [script, '--help'], io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        runpy.run_path(script, run_name='__main__')
    helps[script] = out.getvalue()
print(json.dumps(helps))
"""


@functools.lru_cache(maxsize=None)
def tool_helps():
    """{script: --help text} of every script the pages run that has no parser here."""
    scripts = sorted({a for _, _, c in all_commands() for a in shlex.split(c, comments=True)
                      if a.endswith('.py') and a not in PARSERS})
    res = subprocess.run([sys.executable, '-c', HELP_PRINTER] + scripts, cwd=ROOT,
                         capture_output=True, text=True, check=True)
    return json.loads(res.stdout.splitlines()[-1])


def check_script_flags(script, args, command):
    """The flags of `python script args` exist: parsed by the entry point, else in its --help."""
    assert os.path.isfile(os.path.join(ROOT, script)), command
    if script in PARSERS:
        PARSERS[script]().parse_args(args)  # exits (fails the test) on an unknown flag
        return
    usage = tool_helps()[script]
    assert usage.startswith('usage:'), f'{script} --help: {usage[:200]}'
    for flag in (a.split('=')[0] for a in args if a.startswith('--')):
        assert flag in usage, f'{flag} of {command} not in {script} --help'


def check_make(args, command):
    with open(os.path.join(ROOT, 'Makefile')) as f:
        makefile = f.read()
    for arg in args:
        if '=' in arg:  # a variable the Makefile offers
            assert re.search(rf'^{arg.split("=")[0]}\s*\?=', makefile, re.M), command
        else:
            assert re.search(rf'^{arg}:', makefile, re.M), command


def check_shell_script(args, command):
    """`bash`/`sbatch` [options] script [arguments]: the script exists, and where it hands its
    arguments to main.py (a recipe name first for train.sh), main.py takes them."""
    script = next(a for a in args if a.endswith('.sh'))
    path = os.path.join(ROOT, script)
    assert os.path.isfile(path), command
    rest = args[args.index(script) + 1:]
    if script in MAIN_PY_SCRIPTS:
        skip = MAIN_PY_SCRIPTS[script]
        with open(path) as f:
            text = f.read()
        for recipe in rest[:skip]:
            assert re.search(rf'^\s*[\w|]*\b{re.escape(recipe)}\b[\w|]*\)', text, re.M), command
        opts.build_parser().parse_args(rest[skip:])


@pytest.mark.parametrize('page,section,command', all_commands())
def test_command_flags_exist(page, section, command):
    argv = shlex.split(command, comments=True)
    while '=' in argv[0]:  # environment variables
        argv = argv[1:]
    tool, args = argv[0], argv[1:]
    if tool == 'make':
        check_make(args, command)
    elif tool in ('bash', 'sbatch'):
        check_shell_script(args, command)
    elif args[:2] == ['-m', 'pytest']:
        for path in (a for a in args[2:] if a.startswith('tests/')):
            assert os.path.exists(os.path.join(ROOT, path.split('::')[0])), command
    elif tool == 'torchrun' or args[0] == 'tools/torchrun.py':
        launcher = args if tool == 'torchrun' else args[1:]
        entry = next(i for i, a in enumerate(launcher) if a.endswith('.py'))
        torchrun_parser().parse_args(launcher)  # the launcher's own flags
        check_script_flags(launcher[entry], launcher[entry + 1:], command)
    else:
        check_script_flags(args[0], args[1:], command)


def test_docs_commands_on_the_tour_run():
    """A docs command that uses the tour's model or data runs in the tour test (or is one of the
    README's commands that it runs)."""
    runs = set(tour_commands())
    for page, section, command in all_commands():
        if TOUR_RUN in command or 'data/synthetic' in command:
            assert command in runs, f'{page}, {section}: {command}'


def slug(heading):
    """GitHub's anchor of a heading."""
    text = re.sub(r'[`*]', '', heading).strip().lower()
    return re.sub(r'[^\w\- ]', '', text).replace(' ', '-')


def anchors(page):
    found, seen = set(), {}
    for kind, _, text in markdown(page):
        if kind == 'line' and text.startswith('#'):
            base = slug(text.lstrip('#'))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f'{base}-{count}')
    return found


def relative_links(page):
    """The link targets of a page that are not web addresses, outside code and code spans."""
    targets = []
    for kind, _, text in markdown(page):
        if kind == 'line':
            text = re.sub(r'`[^`]*`', '', text)
            targets += re.findall(r'\]\(([^)\s]+)\)', text)
            targets += re.findall(r'<img src="([^"]+)"', text)
    return [t for t in targets if not re.match(r'[a-z]+:', t)]


@pytest.mark.parametrize('page', PAGES)
def test_links_lead_somewhere(page):
    for target in relative_links(page):
        path, _, anchor = target.partition('#')
        linked = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
        if linked in PENDING_PAGES and not os.path.exists(os.path.join(ROOT, linked)):
            continue
        assert os.path.exists(os.path.join(ROOT, linked)), f'{page}: {target}'
        if anchor:
            assert linked.endswith('.md'), f'{page}: {target}'
            assert anchor in anchors(linked), f'{page}: {target}'


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


@pytest.mark.slow
def test_synthetic_tour_runs_as_written(tmp_path):
    make_checkout(tmp_path)
    repo_status = git_status(ROOT)
    results = [run_command(c, cwd=tmp_path) for c in section_commands(TOUR)]
    run = tmp_path / TOUR_RUN
    assert (run / 'checkpoint/ckpt.best.pth.tar').is_file()
    assert (run / 'log/log.txt').is_file() and any((run / 'tensorboardX').iterdir())
    scores = sorted(f for f in os.listdir(tmp_path / 'score') if f.endswith('.npz'))
    assert scores == ['synthetic_MASNet_resnet10_8f_1crop_1clip_64px.npz',
                      'synthetic_MASNet_resnet10_8f_3crop_2clip_73px.npz']  # full_res: 64*256/224
    assert 'ensemble' in results[3].stdout
    assert (tmp_path / 'outputs' / 'cam.png').stat().st_size > 10000
    assert '26.07 M params, 33.55 GFLOPs' in results[5].stdout
    # the commands that use the tour's model, from the same folder
    for command in tour_commands()[len(results):]:
        run_command(command, cwd=tmp_path)
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


@pytest.mark.slow
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
