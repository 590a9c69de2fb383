"""The registry of temporal types (ops/temporal.py): every list of types reads it, and a new type
added through docs/contributing.md's two steps reaches training, test.py and torch.hub."""
import glob
import importlib.util
import logging
import os
import re
import sys

import pytest
import torch

import CAM
import main as train_main
import opts
import test as test_main
from ops import temporal
from ops.checkpoint import CheckpointError, model_description, read_checkpoint
from ops.models import TemporalModel, model_from_checkpoint
from ops.run_train import check_resume_hyperparameters
from tests.conftest import ROOT


def guide_code_blocks():
    """The python code blocks of docs/contributing.md's 'Adding a temporal module', in order."""
    text = open(os.path.join(ROOT, 'docs', 'contributing.md')).read()
    section = re.split(r'\n##+ ', text.split('### Adding a temporal module\n', 1)[1], 1)[0]
    return [block.split('```', 1)[0] for block in section.split('```python\n')[1:]]


@pytest.fixture
def half_shift(tmp_path):
    """The guide's steps: its module file written as ops/half_shift.py, its registry entry run;
    undone afterwards. Yields the new module."""
    module_file, registration = guide_code_blocks()
    path = tmp_path / 'half_shift.py'
    path.write_text(module_file)
    spec = importlib.util.spec_from_file_location('ops.half_shift', path)
    module = importlib.util.module_from_spec(spec)
    sys.modules['ops.half_shift'] = module
    spec.loader.exec_module(module)
    exec(compile(registration, 'docs/contributing.md', 'exec'), {})
    yield module
    temporal.TEMPORAL_MODULES.pop('HalfShift', None)
    sys.modules.pop('ops.half_shift', None)


def type_choices(parser):
    action = next(a for a in parser._actions if '--type' in a.option_strings)
    return action.choices, action.help


def test_a_type_registered_at_run_time_is_in_every_list(half_shift):
    assert temporal.temporal_types()[-1] == 'HalfShift'
    for parser in (opts.build_parser(), test_main.build_parser(), CAM.build_parser()):
        choices, help_text = type_choices(parser)
        assert tuple(choices) == temporal.temporal_types()
        assert 'HalfShift (half shift)' in help_text and 'MASNet (MAM+MSM+TIM)' in help_text
    hub = torch.hub.load(ROOT, 'halfshift_resnet101', source='local', num_classes=3,
                         num_segments=2, input_size=32)
    assert hub.temporal_type == 'HalfShift' and hub.arch == 'resnet101'
    assert isinstance(hub.base_model.layer1[0], half_shift.HalfShiftBottleneck)
    assert hub.base_model.layer1[0].fold_div == 16


def test_the_registry_refuses_blocks_without_both_kinds():
    with pytest.raises(ValueError, match="'basic': cls"):
        temporal.register_temporal_type('Broken', {'bottleneck': object})
    assert 'Broken' not in temporal.temporal_types()
    with pytest.raises(ValueError, match='choose from MASNet, TSM, TSN'):
        TemporalModel(5, 4, 'Broken', 'resnet10')


def test_a_changed_hyperparameter_is_one_warning_at_evaluation_and_refused_at_resume(
        half_shift, tmp_path, monkeypatch, caplog):
    model = TemporalModel(5, 4, 'HalfShift', 'resnet10', input_size=32)
    description = model_description(model, [str(i) for i in range(5)])
    assert description['hyperparameters']['HalfShiftBasicBlock'] == {'fold_div': 16}
    checkpoint = dict(description, state_dict=model.state_dict())
    with caplog.at_level(logging.WARNING, logger='masnet.model'):
        model_from_checkpoint(checkpoint, 'ckpt.pth')
    assert caplog.text == ''  # the same values: no word
    original_init = half_shift._HalfShiftMixin.__init__

    def edited_init(self, *args, **kwargs):  # fold_div = 8 in the code since training
        original_init(self, *args, **kwargs)
        self.fold_div = 8

    monkeypatch.setattr(half_shift._HalfShiftMixin, '__init__', edited_init)
    with caplog.at_level(logging.WARNING, logger='masnet.model'):
        rebuilt = model_from_checkpoint(checkpoint, 'ckpt.pth')
    assert rebuilt.base_model.layer1[0].fold_div == 8
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["checkpoint 'ckpt.pth' was trained with other module hyper-parameters "
                        "(HalfShiftBasicBlock.fold_div 16 in the checkpoint, 8 in the code): it "
                        "runs with the code's values"]
    args = opts.parse_args(['--type', 'HalfShift'])
    with pytest.raises(CheckpointError, match='fold_div 16 in the checkpoint.*--resume_changed'):
        check_resume_hyperparameters(checkpoint, 'ckpt.pth', rebuilt, args)
    args.resume_changed = True
    check_resume_hyperparameters(checkpoint, 'ckpt.pth', rebuilt, args)  # a warning only


@pytest.mark.slow
def test_the_guide_trains_evaluates_and_hubs_a_new_type(half_shift, tiny_data_root, tmp_path):
    out = str(tmp_path / 'exp')
    common = ['--dataset', 'synthetic', '--dataset_path', tiny_data_root]
    torch.manual_seed(0)
    train_main.main(common + ['--type', 'HalfShift', '--arch', 'resnet10', '--num_segments', '4',
                              '--input_size', '32', '--pretrain', 'none', '-b', '8', '-j', '0',
                              '--epochs', '1', '--lr', '0.01', '--root_log', out,
                              '--root_checkpoint', out, '--store_name', 'guide'])
    path, = glob.glob(os.path.join(out, '**', 'ckpt.pth.tar'), recursive=True)
    assert os.sep + 'HalfShift' + os.sep in path
    checkpoint = read_checkpoint(path)
    assert checkpoint['type'] == 'HalfShift' and checkpoint['epoch'] == 1
    assert checkpoint['hyperparameters']['HalfShiftBasicBlock'] == {'fold_div': 16}
    top1, _, _ = test_main.main(common + ['--weights', path, '--test_crops', '1', '-j', '0',
                                          '--batch_size', '4', '--save_scores', ''])
    assert 0 <= top1 <= 100
    hub = torch.hub.load(ROOT, 'temporal_model', source='local', weights=path)
    assert hub.temporal_type == 'HalfShift'
    assert isinstance(hub.base_model.layer1[0], half_shift.HalfShiftBasicBlock)
    for key, value in checkpoint['state_dict'].items():
        assert torch.equal(hub.state_dict()[key], value), key
