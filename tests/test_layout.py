"""The house's floors: every import between the project's modules points down.

A module may import only from floors below its own (docs/layout.md draws them).
A new module must be given a floor here; an import that points up or sideways fails, and so
does a floor naming a module that no longer exists. A constant is defined in one module only.
"""
import ast
import glob
import os

from tests.conftest import ROOT

FLOORS = [
    # 0: the ground: errors and the plain ResNet
    ['ops.errors', 'archs.resnet'],
    # 1: building blocks with one job each: atomic files, meters, logs, where the model runs
    # (and its seeds), parameter groups and schedules, transforms, the fused MAS arithmetic,
    # the synthetic generator
    ['archs', 'ops.files', 'ops.meters', 'ops.logs', 'ops.runtime', 'ops.optim',
     'ops.transforms', 'ops.mas_fused', 'ops.synthetic'],
    # 2: command-line plumbing, run folders and their lock, ImageNet downloads
    ['ops.cli', 'ops.run_folder', 'ops.download'],
    # 3: temporal blocks, data layouts and readers, checkpoint I/O, the epoch loops, score files
    ['ops.MASNet', 'ops.temporal_shift', 'ops.dataset_config', 'ops.video_readers',
     'ops.checkpoint', 'ops.engine', 'ops.export', 'ops.preemption', 'ops.scores'],
    # 4: the registry of temporal types, the dataset and its view protocol, multi-view
    # evaluation and its error analysis
    ['ops.temporal', 'ops.dataset', 'ops.evaluation'],
    # 5: the model; the command-line flags
    ['ops.models', 'opts'],
    # 6: what uses a model: the Recognizer API (inputs, predictions) and the runs behind
    # main.py and CAM.py (Grad-CAM)
    ['ops.recognizer', 'ops.run_train', 'ops.gradcam'],
    # 7: the runs over a Recognizer's pieces: the evaluation behind test.py, the prediction run
    # (and its sliding windows) behind predict.py
    ['ops.run_eval', 'ops.run_predict'],
]


def project_imports(path):
    """Modules of ops/, archs/ and opts imported by the file at `path` (lazy imports too)."""
    deps = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == 'ops':
                deps.update(f'ops.{alias.name}' for alias in node.names)
            elif node.module.split('.')[0] in ('ops', 'archs', 'opts'):
                deps.add(node.module)
        elif isinstance(node, ast.Import):
            deps.update(a.name for a in node.names
                        if a.name.split('.')[0] in ('ops', 'archs', 'opts'))
    return deps


def module_files():
    files = (glob.glob(os.path.join(ROOT, 'ops', '*.py'))
             + glob.glob(os.path.join(ROOT, 'archs', '*.py')))
    files.append(os.path.join(ROOT, 'opts.py'))
    for path in sorted(files):
        name = os.path.relpath(path, ROOT)[:-3].replace(os.sep, '.')
        if name.endswith('.__init__'):
            name = name[:-len('.__init__')]
        yield name, path


def test_every_import_points_down():
    floor = {module: level for level, modules in enumerate(FLOORS) for module in modules}
    upward = []
    for name, path in module_files():
        if name == 'ops':  # the empty package marker
            continue
        assert name in floor, f'{name} has no floor in tests/test_layout.py'
        for dep in project_imports(path):
            if dep != name and floor.get(dep, -1) >= floor[name]:
                upward.append(f'{name} (floor {floor[name]}) imports {dep} (floor {floor[dep]})')
    assert not upward, upward


def test_backbones_know_nothing_of_temporal_modules():
    for name, path in module_files():
        if name.startswith('archs'):
            assert not {d for d in project_imports(path) if not d.startswith('archs')}, name


def test_every_floor_names_a_module():
    """A renamed or removed module leaves no stale floor behind."""
    modules = {name for name, _ in module_files()}
    stale = [m for floor in FLOORS for m in floor if m not in modules]
    assert not stale, stale


def top_level_constants(path):
    """UPPER_CASE names assigned at the top level of the file at `path`."""
    names = set()
    for node in ast.parse(open(path).read()).body:
        targets = node.targets if isinstance(node, ast.Assign) else []
        for target in targets:
            elements = target.elts if isinstance(target, ast.Tuple) else [target]
            names.update(e.id for e in elements if isinstance(e, ast.Name) and e.id.isupper())
    return names


def test_each_constant_is_defined_once():
    """A constant (IMAGE_EXTENSIONS, say) lives in one module; the others import it."""
    where = {}
    for name, path in module_files():
        for constant in top_level_constants(path):
            where.setdefault(constant, []).append(name)
    twice = {c: modules for c, modules in where.items() if len(modules) > 1}
    assert not twice, twice


def drawn_floors():
    """The floors drawn in docs/layout.md's 'Import floors' block: [(module, floor)]."""
    text = open(os.path.join(ROOT, 'docs', 'layout.md')).read()
    block = text.split('## Import floors', 1)[1].split('```')[1]
    drawn, level = [], None
    for line in block.strip('\n').splitlines():
        words = line.split()
        if words and words[0].isdigit():
            level, words = int(words[0]), words[1:]
        drawn += [(word.replace('/', '.'), level) for word in words]
    return drawn


def test_the_drawn_floors_are_the_tested_ones():
    tested = {module: level for level, modules in enumerate(FLOORS) for module in modules}
    drawn = drawn_floors()
    assert len({module for module, _ in drawn}) == len(drawn), 'a module drawn twice'
    assert dict(drawn) == tested
