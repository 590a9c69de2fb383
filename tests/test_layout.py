"""The house's floors: every import between the project's modules points down.

A module may import only from floors below its own (the README's layout section draws them).
A new module must be given a floor here; an import that points up or sideways fails.
"""
import ast
import glob
import os

from tests.conftest import ROOT

FLOORS = [
    # 0: the ground: errors and the plain ResNet
    ['ops.errors', 'archs.resnet'],
    # 1: leaves: utilities, schedules, devices, transforms, the synthetic generator
    ['archs', 'ops.utils', 'ops.optim', 'ops.lr_schedule', 'ops.distributed', 'ops.synthetic',
     'ops.mas_fused',
     'ops.transforms', 'ops.cli'],
    # 2: downloads of ImageNet weights (atomic writes, progress bars below; checkpoint I/O above)
    ['ops.download'],
    # 3: temporal blocks, data layouts and readers, checkpoint I/O, run folders, the epoch loops
    ['ops.MASNet', 'ops.temporal_shift', 'ops.dataset_config', 'ops.video_readers',
     'ops.checkpoint', 'ops.experiment', 'ops.engine', 'ops.export', 'ops.preemption'],
    # 4: the registry of temporal types, the dataset, scores, the test reference, the account
    # of memory traffic
    ['ops.temporal', 'ops.dataset', 'ops.evaluation', 'ops.reference', 'ops.traffic'],
    # 5: the model; the command-line flags
    ['ops.models', 'opts', 'ops.analysis'],
    # 6: what uses a model: training, Grad-CAM, the Recognizer API (and its prediction records)
    ['ops.training', 'ops.gradcam', 'ops.recognizer'],
    # 7-8: test.py's evaluation (writes submissions through the API's records) and streams,
    # then the prediction run
    ['ops.inference', 'ops.stream'],
    ['ops.predict'],
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
            deps.update(a.name for a in node.names if a.name.split('.')[0] in ('ops', 'archs', 'opts'))
    return deps


def module_files():
    files = glob.glob(os.path.join(ROOT, 'ops', '*.py')) + glob.glob(os.path.join(ROOT, 'archs', '*.py'))
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
