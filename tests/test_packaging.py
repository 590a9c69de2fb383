"""The installed project (pyproject.toml, `make setup`'s `pip install -e .`): the tools run from
any folder, as scripts and as modules, with nothing added to sys.path or PYTHONPATH."""
import ast
import glob
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

TOOLS = [
    'gen_label',  # ops only
    pytest.param('export', marks=pytest.mark.slow),  # ops, torch and the top-level opts module
]


def run_outside_the_clone(command, cwd):
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize('how', ['script', 'module'])
@pytest.mark.parametrize('tool', TOOLS)
def test_tools_run_from_another_folder(tool, how, tmp_path):
    if how == 'script':
        command = [sys.executable, os.path.join(ROOT, 'tools', f'{tool}.py'), '--help']
    else:
        command = [sys.executable, '-m', f'tools.{tool}', '--help']
    proc = run_outside_the_clone(command, tmp_path)
    assert proc.returncode == 0, (
        f'{" ".join(command[1:])} in {tmp_path} failed (is the project installed? '
        f'`make setup` runs `pip install -e .`):\n{proc.stderr}')
    assert proc.stdout.startswith(f'usage: {tool}.py '), proc.stdout[:200]


def top_level_imports(path):
    """First components of the absolute imports of the file at `path` (lazy imports too)."""
    names = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split('.')[0])
        elif isinstance(node, ast.Import):
            names.update(alias.name.split('.')[0] for alias in node.names)
    return names


def test_installed_code_imports_only_what_is_installed():
    tomllib = pytest.importorskip('tomllib')  # Python 3.11+
    with open(os.path.join(ROOT, 'pyproject.toml'), 'rb') as f:
        setuptools = tomllib.load(f)['tool']['setuptools']
    installed = set(setuptools['packages']) | set(setuptools['py-modules'])
    in_the_clone = {os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, '*.py'))}
    in_the_clone |= {os.path.basename(os.path.dirname(p))
                     for p in glob.glob(os.path.join(ROOT, '*', '__init__.py'))}
    missing = {}
    for package in setuptools['packages']:
        for path in glob.glob(os.path.join(ROOT, package, '*.py')):
            needed = (top_level_imports(path) & in_the_clone) - installed
            if needed:
                missing[os.path.relpath(path, ROOT)] = sorted(needed)
    assert not missing, f'imports of modules pyproject.toml does not install: {missing}'


def test_no_code_edits_sys_path():
    """The install is what makes ops importable: no tool or script prepends the clone itself."""
    editing = []
    for path in glob.glob(os.path.join(ROOT, '**', '*.py'), recursive=True):
        if os.sep + '.venv' in path or os.sep + 'tests' + os.sep in path:
            continue
        for node in ast.walk(ast.parse(open(path).read())):
            if (isinstance(node, ast.Attribute) and node.attr == 'path'
                    and isinstance(node.value, ast.Name) and node.value.id == 'sys'):
                editing.append(os.path.relpath(path, ROOT))
                break
    assert not editing, f'sys.path used in {editing}'
