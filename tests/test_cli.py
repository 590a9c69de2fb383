"""Every entry point's --help shows the default of each option that has one."""
import argparse
import importlib
import re

import pytest

from ops.cli import HelpFormatter

ENTRY_POINTS = ['main', 'test', 'predict', 'CAM', 'average_scores'] + [
    f'tools.{name}' for name in (
        'ablation_table', 'bench_data', 'bench_export', 'bench_model', 'calibration',
        'check_videos', 'compare_scores', 'draw_architecture', 'export', 'extract_frames',
        'fault_injection', 'flops', 'frames_to_video', 'gen_label', 'gpu_check', 'plot_curves',
        'summarize_runs')]


class Captured(Exception):
    def __init__(self, parser):
        super().__init__()
        self.parser = parser


def entry_parser(module_name, monkeypatch):
    """The parser `module_name`.main builds (caught at its parse_args, before any work)."""
    module = importlib.import_module(module_name)

    def capture(parser, *args, **kwargs):
        raise Captured(parser)

    monkeypatch.setattr(argparse.ArgumentParser, 'parse_args', capture)
    with pytest.raises(Captured) as caught:
        module.main([])
    return caught.value.parser


def action_help(parser, action):
    """The help text --help prints for `action`, whitespace collapsed."""
    formatter = parser._get_formatter()
    return ' '.join(formatter._format_action(action).split())


@pytest.mark.parametrize('module_name', ENTRY_POINTS)
def test_help_shows_every_default(module_name, monkeypatch):
    parser = entry_parser(module_name, monkeypatch)
    assert parser.formatter_class is HelpFormatter
    for action in parser._actions:
        text = action_help(parser, action)
        switch = action.nargs == 0  # store_true / store_false: the help says what it does
        unset = action.default is None or action.default is False or action.default == ''
        if action.option_strings and not switch and not unset:
            expected = f'default: {action.default}'
            assert expected.replace(' ', '') in text.replace(' ', ''), (action.option_strings, text)
            assert text.lower().count('default') == 1, (action.option_strings, text)
        else:
            assert not re.search(r'\(default: (None|False|True)\)', text), text


def test_options_without_help_show_their_default_too():
    parser = argparse.ArgumentParser(formatter_class=HelpFormatter)
    parser.add_argument('--momentum', default=0.9, type=float)
    parser.add_argument('--flag', action='store_true')
    parser.add_argument('--name', default=None, help='a name')
    text = ' '.join(parser.format_help().split())
    assert '--momentum MOMENTUM (default: 0.9)' in text
    assert 'default: False' not in text and 'default: None' not in text
