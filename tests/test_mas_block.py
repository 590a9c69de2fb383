"""The forms of a MAS block (ops/MASNet.py): the switch, the readable and the compiled forms
against tools/release_formulation.py in float64, the compiled form's fallback to the fast form,
the check of the fast forms against the readable modules, and the modules' hyper-parameters."""
import ast
import os
import re
import shutil
import subprocess
import sys
import warnings

import pytest
import torch

from ops import MASNet, mas_fused
from ops.errors import UserError
from ops.models import TemporalModel
from tests.conftest import ROOT, randomize_bn
from tests.test_model import randomize_tim
from tools import release_formulation as ref

T = 4


@pytest.fixture(autouse=True)
def keep_default_form(monkeypatch):
    monkeypatch.setattr(MASNet._default, 'form', MASNet._default.form)


def block_and_input(seed=0, channels=64):
    torch.manual_seed(seed)
    block = MASNet.MASBottleneck(4 * channels, channels, num_segments=T)
    block = randomize_tim(randomize_bn(block)).double()
    x = torch.randn(2 * T, channels, 6, 6, dtype=torch.float64, requires_grad=True)
    return block, x


def reference_chain(block, x):
    return ref.tim(block.TIM, ref.msm(block.MSM, ref.mam(block.MAM, x, T), x, T), T)


def assert_matches_reference(block, x, train):
    """`block.temporal` equals the reference chain; with `train` its gradients too."""
    block.train(train)
    params = [x, block.MAM.conv1.weight, block.MAM.conv3.weight, block.MSM.conv_fc1.weight,
              block.MSM.conv_fc2.weight, block.TIM.conv.weight]
    with torch.set_grad_enabled(train):
        expected = reference_chain(block, x)
        got = block.temporal(x.clone() if not train else x)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    if train:
        upstream = torch.randn(got.shape, dtype=torch.float64)
        for a, b in zip(torch.autograd.grad((got * upstream).sum(), params),
                        torch.autograd.grad((expected * upstream).sum(), params)):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize('train', [False, True])
def test_readable_form_is_the_reference(train):
    block, x = block_and_input()
    MASNet.set_form('readable', block)
    assert_matches_reference(block, x, train)


def test_readable_form_runs_the_module_forwards():
    """The switch runs MAM.forward -> MSM.forward -> TIM.forward (readable); the fast form
    calls none of them (it is checked against them instead)."""
    block, x = block_and_input()
    called = []
    for name in ('MAM', 'MSM', 'TIM'):
        getattr(block, name).register_forward_hook(lambda m, i, o, n=name: called.append(n))
    MASNet.set_form('readable', block)
    with torch.no_grad():
        block.temporal(x)
        assert called == ['MAM', 'MSM', 'TIM']
        MASNet.set_form('fast', block)
        block.temporal(x.clone())
    assert called == ['MAM', 'MSM', 'TIM']


def test_whole_model_in_readable_form_equals_fast_form():
    torch.manual_seed(0)
    model = TemporalModel(5, T, 'MASNet', 'resnet10', input_size=32, dropout=0)
    model = randomize_tim(randomize_bn(model)).double().eval()
    torch.nn.init.normal_(model.new_fc.weight, 0, 0.1)
    x = torch.randn(2, 3 * T, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        fast = model(x)
        readable = MASNet.set_form('readable', model)(x)
        expected = ref.temporal_model(model, x)
    torch.testing.assert_close(readable, expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(fast, expected, rtol=1e-9, atol=1e-10)


def test_form_switch_defaults(monkeypatch):
    monkeypatch.setattr(MASNet._default, 'form', None)
    monkeypatch.delenv(MASNet.FORM_ENV, raising=False)
    assert MASNet.MASBasicBlock(16, 16, num_segments=T).form == 'fast'
    for name, form in (('readable', 'readable'), ('reference', 'readable'), ('eager', 'fast'),
                       ('compiled', 'compiled')):  # the old names still work
        monkeypatch.setenv(MASNet.FORM_ENV, name)
        assert MASNet.MASBasicBlock(16, 16, num_segments=T).form == form
        assert MASNet.set_form(name, MASNet.MASBasicBlock(16, 16, num_segments=T)).form == form
    monkeypatch.setenv(MASNet.FORM_ENV, 'fused')
    with pytest.raises(UserError, match="MASNET_FORM: unknown MAS block form 'fused'"):
        MASNet.MASBasicBlock(16, 16, num_segments=T)
    MASNet.set_form('eager')  # the setter wins over the variable
    assert MASNet.MASBasicBlock(16, 16, num_segments=T).form == 'fast'
    with pytest.raises(UserError, match="unknown MAS block form 'fused'"):
        MASNet.set_form('fused')


def test_compiler_formulation_gradcheck():
    """The functions the compiler gets (run uncompiled here), forward and hand-written backward:
    numerical gradients, and the fast form's outputs and gradients."""
    g = torch.Generator().manual_seed(0)
    N, C, r, H, W = 2, 8, 2, 3, 3
    shapes = [(N * T, C, H, W), (N * T, r, H, W), (C, r, 1, 1), (N, C, H, W), (C, 1, 3)]
    inputs = [torch.randn(s, generator=g, dtype=torch.float64).requires_grad_() for s in shapes]
    inputs[3].data.uniform_(0, 1, generator=g)

    def fused(*args):
        return mas_fused.FusedSelectInteract.apply(*args, mas_fused.run_uncompiled)
    assert torch.autograd.gradcheck(fused, inputs)
    assert torch.autograd.gradcheck(mas_fused.select_interact_math, inputs)
    upstream = torch.randn(shapes[0], generator=g, dtype=torch.float64)
    got, want = fused(*inputs), mas_fused.select_and_interact(*inputs)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    for a, b in zip(torch.autograd.grad((got * upstream).sum(), inputs),
                    torch.autograd.grad((want * upstream).sum(), inputs)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.fixture
def fresh_compiled(monkeypatch):
    """The compiled function is made anew in the test (and forgotten after it)."""
    monkeypatch.setattr(mas_fused._Compiled, 'functions', {})
    monkeypatch.setattr(mas_fused._Compiled, 'failed', False)


def test_compiled_form_falls_back_to_fast_without_a_compiler(monkeypatch, fresh_compiled):
    """A compiler that fails at first call (as Inductor does without a C++ compiler): one
    warning, then the fast form, with the reference's outputs and gradients."""
    calls = []

    def broken_compile(fn, **kwargs):
        def compiled(*args):
            calls.append(fn.__name__)
            raise RuntimeError('InvalidCxxCompiler: No working C++ compiler found')
        return compiled
    monkeypatch.setattr(mas_fused.torch, 'compile', broken_compile)
    block, x = block_and_input()
    MASNet.set_form('compiled', block)
    with pytest.warns(RuntimeWarning, match='torch.compile failed .*C\\+\\+ compiler'):
        assert_matches_reference(block, x, train=True)
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # no second warning
        assert_matches_reference(block, x, train=False)
        assert_matches_reference(block, x, train=True)
    assert calls == ['select_interact_math']  # tried once, never again


@pytest.mark.slow
def test_compiled_form_matches_reference(fresh_compiled):
    """The regionally compiled chain (torch.compile, Inductor): the reference's outputs and
    gradients in float64, in inference and training, without falling back."""
    block, x = block_and_input()
    MASNet.set_form('compiled', block)
    with warnings.catch_warnings():
        warnings.simplefilter('error', RuntimeWarning)
        assert_matches_reference(block, x, train=True)
        assert_matches_reference(block, x, train=False)
    assert not mas_fused._Compiled.failed


def test_hyperparameters_name_the_instance_attributes():
    """Every name a module's ``hyperparameters`` lists is an attribute holding its init value
    (builders store them in the checkpoint), and the value is the one the module computes with."""
    from ops.temporal_shift import TSMBasicBlock, temporal_shift
    cases = [(MASNet.MAM(64, T, reduction=16, alpha=0.8), {'alpha': 0.8, 'reduction': 16}),
             (MASNet.MSM(64, T, reduction=8, groups=2), {'reduction': 8, 'groups': 2}),
             (MASNet.TIM(64, T, fold_div=4), {'fold_div': 4}),
             (TSMBasicBlock(16, 16, num_segments=T, fold_div=4), {'fold_div': 4})]
    for module, values in cases:
        assert MASNet.hyperparameter_values(module) == values, type(module).__name__
    mam, msm, tim, tsm = (module for module, _ in cases)
    assert mam.conv1.out_channels == 4 and msm.conv_fc1.out_channels == 8
    assert msm.conv_fc1.groups == 2 and int(tim.conv.weight[:, 0, 2].sum()) == 16
    x = torch.randn(2 * T, 16, 3, 3)
    torch.testing.assert_close(tsm.shift_input(x), temporal_shift(x, T, fold_div=4))
    assert MASNet.hyperparameter_values(MASNet.MAM(64, T)) == {'alpha': 0.5, 'reduction': 64}


@pytest.fixture
def fresh_checks(monkeypatch):
    """The fast forms are checked anew in the test (the process's record of checks restored)."""
    monkeypatch.setattr(MASNet._checked, 'keys', set())


def doubled(method):
    def edited(self, *args):
        return 2 * method(self, *args)
    return edited


@pytest.mark.parametrize('name', ['MAM', 'MSM', 'TIM'])
@pytest.mark.parametrize('train', [False, True])
def test_an_edited_module_stops_the_fast_form(monkeypatch, fresh_checks, name, train):
    """A readable forward edited without its fast form: the first fast forward stops with one
    line naming the module and the way out (in-process; the fresh-process runs are below)."""
    module = getattr(MASNet, name)
    monkeypatch.setattr(module, 'forward', doubled(module.forward))
    block, x = block_and_input()
    block.train(train)
    with torch.set_grad_enabled(train), pytest.raises(MASNet.FormMismatch) as error:
        block(torch.randn(2 * T, 256, 3, 3, dtype=torch.float64))
    message = str(error.value)
    assert '\n' not in message and isinstance(error.value, UserError)
    assert message.startswith(f'MAS block check (MASBottleneck, 64 channels, T={T}): '
                              f'{name}.forward (the readable {name}) and its fast form differ')
    assert '--mas_form readable' in message and MASNet.FAST_FORMS[name] in message
    MASNet.set_form('readable', block)  # the way out: the edited module runs
    with torch.no_grad():
        torch.testing.assert_close(block.temporal(x), edited_chain(block, x, name))


def edited_chain(block, x, name):
    """The oracle's chain with module `name` doubled."""
    def scale(module_name):
        return 2 if module_name == name else 1
    motion = scale('MAM') * ref.mam(block.MAM, x, T)
    selected = scale('MSM') * ref.msm(block.MSM, motion, x, T)
    return scale('TIM') * ref.tim(block.TIM, selected, T)


@pytest.mark.parametrize('target,attribute,named', [
    (mas_fused.SelectInteract, 'backward', 'training path (ops/mas_fused.py SelectInteract'),
    (mas_fused, 'select_interact_backward_math', 'compiled core, run uncompiled'),
    (mas_fused, 'select_interact_math', 'compiled core, run uncompiled'),
    (MASNet, 'recorded_temporal', 'recorded (export) path'),
    (MASNet.TIM, 'interact', 'TIM.forward (the readable TIM)'),
    (MASNet.MSM, 'selection', 'MSM.forward (the readable MSM)'),
])
def test_a_wrong_fast_function_is_named(monkeypatch, fresh_checks, target, attribute, named):
    """Each fast path is compared: a fast function that goes wrong is named in the message."""
    original = getattr(target, attribute)

    def wrong(*args, **kwargs):
        result = original(*args, **kwargs)
        if isinstance(result, tuple):  # a backward: one gradient off
            return (result[0] * 1.001,) + tuple(result[1:])
        return result * 1.001
    monkeypatch.setattr(target, attribute, staticmethod(wrong) if isinstance(
        target.__dict__.get(attribute), staticmethod) else wrong)
    block, _ = block_and_input()
    with pytest.raises(MASNet.FormMismatch, match=re.escape(named)):
        MASNet.check_forms(block)


def test_the_check_runs_once_and_leaves_the_model_alone(monkeypatch, fresh_checks):
    """Once per block shape and hyper-parameters per process; the model's tensors, batch
    statistics, the global RNG, grad mode and thread count untouched; readable blocks and
    inference mode skip nothing they should not."""
    calls = []
    compare_copies = MASNet.compare_copies
    monkeypatch.setattr(MASNet, 'compare_copies', lambda *a: calls.append(a) or compare_copies(*a))
    model = TemporalModel(5, T, 'MASNet', 'resnet10', input_size=32).train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng, threads = torch.get_rng_state(), torch.get_num_threads()
    with torch.inference_mode():
        MASNet.check_forms(model)
    assert len(calls) == 4  # resnet10: one block per stage, 4 widths
    assert torch.equal(torch.get_rng_state(), rng) and torch.get_num_threads() == threads
    assert torch.is_grad_enabled() and model.training
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    MASNet.check_forms(model)
    model(torch.randn(2, 3 * T, 32, 32)).sum().backward()
    assert len(calls) == 4  # checked already
    model.base_model.layer1[0].MAM.alpha += 0.25  # another function: checked again
    MASNet.check_forms(model)
    assert len(calls) == 5
    MASNet.check_forms(MASNet.set_form('readable', model))
    assert len(calls) == 5


def accumulate_with_previous(self, b):
    """A researcher's change: frame t blended with frame t-1 (the first frame kept)."""
    blended = (b[:, 1:] + self.alpha * b[:, :-1]) / (1 + self.alpha)
    return torch.cat([b[:, :1], blended], dim=1)


@pytest.mark.parametrize('alpha', [0.5, 0.8])
def test_the_blend_is_written_once(monkeypatch, fresh_checks, alpha):
    """MAM's blend (``accumulate_frames``) is every form's: another alpha or another blend
    changes the readable, fast and recorded forms alike, and the check passes."""
    block, x = block_and_input()
    block.MAM.alpha = alpha
    with torch.no_grad():
        before = MASNet.set_form('fast', block).temporal(x.clone())
        torch.testing.assert_close(before, reference_chain(block, x), rtol=1e-10, atol=1e-10)
        monkeypatch.setattr(MASNet.MAM, 'accumulate_frames', accumulate_with_previous)
        fast = block.temporal(x.clone())
        readable = MASNet.set_form('readable', block).temporal(x)
        recorded = MASNet.recorded_temporal(block.MAM, block.MSM, block.TIM, x)
    assert (fast - before).abs().max() > 1e-3  # the change reached the fast form
    torch.testing.assert_close(fast, readable, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(recorded, readable, rtol=1e-10, atol=1e-10)


EDIT_SCRIPT = '''
import torch
from ops.errors import UserError
from ops.MASNet import set_form
from ops.models import TemporalModel
torch.manual_seed(0)
model = TemporalModel(5, 4, 'MASNet', 'resnet10', input_size=32)
x = torch.randn(2, 12, 32, 32)
for mode in ('eval', 'train'):
    try:
        if mode == 'eval':
            with torch.no_grad():
                model.eval()(x)
        else:
            model.train()(x).sum().backward()
        print(mode, 'ran')
    except UserError as error:
        print(mode, error)
with torch.no_grad():
    print('readable', set_form('readable', model).eval()(x).shape)
'''


def double_the_output(path, class_name):
    """Edit the file at `path`: ``class_name.forward`` returns twice what it returned."""
    source = open(path).read()
    tree = ast.parse(source)
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == class_name)
    forward = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == 'forward')
    value = [n for n in ast.walk(forward) if isinstance(n, ast.Return)][-1].value
    lines = source.splitlines(keepends=True)
    assert value.lineno == value.end_lineno  # one-line returns
    line = lines[value.lineno - 1]
    lines[value.lineno - 1] = (line[:value.col_offset] + '2 * (' +
                               line[value.col_offset:value.end_col_offset] + ')' +
                               line[value.end_col_offset:])
    open(path, 'w').write(''.join(lines))


@pytest.mark.slow
@pytest.mark.parametrize('name', ['MAM', 'MSM', 'TIM'])
def test_an_edit_of_the_readable_module_is_never_ignored(tmp_path, name):
    """As a researcher would: a copy of the code with ``{name}.forward`` doubling its output,
    run in a fresh process with the default settings. Evaluating and training stop with one
    line naming the module; ``--mas_form readable`` (set_form) runs the edited module."""
    for folder in ('ops', 'archs'):
        shutil.copytree(os.path.join(ROOT, folder), tmp_path / folder,
                        ignore=shutil.ignore_patterns('__pycache__'))
    double_the_output(tmp_path / 'ops' / 'MASNet.py', name)
    env = {k: v for k, v in os.environ.items() if k != MASNet.FORM_ENV}
    env['PYTHONPATH'] = str(tmp_path)
    result = subprocess.run([sys.executable, '-c', EDIT_SCRIPT], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 3, result.stdout
    for mode, line in zip(('eval', 'train'), lines):
        assert line.startswith(f'{mode} MAS block check (MASBasicBlock, 64 channels, T=4): '
                               f'{name}.forward (the readable {name}) and its fast form differ')
        assert '--mas_form readable' in line
    assert lines[2] == 'readable torch.Size([2, 5])'


def test_mas_form_flag_shows_the_new_names_and_takes_the_old(capsys):
    import argparse

    import opts
    parser = argparse.ArgumentParser()
    opts.add_speed_args(parser)
    for name, form in (('readable', 'readable'), ('reference', 'readable'), ('fast', 'fast'),
                       ('eager', 'fast'), ('compiled', 'compiled')):
        assert parser.parse_args(['--mas_form', name]).mas_form == form
    assert parser.parse_args([]).mas_form is None  # then $MASNET_FORM, else fast
    with pytest.raises(SystemExit):
        parser.parse_args(['--mas_form', 'fused'])
    assert "invalid choice: 'fused'" in capsys.readouterr().err
    assert '{readable,fast,compiled}' in parser.format_help()
