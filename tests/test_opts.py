"""One meaning per flag: every alias parses as its release spelling, --help shows both, and no
flag spelling means two things in two scripts (but the release's two, each with a clear name).

The glossary (docs/glossary.md) says what each word means; this file checks the parsers agree.
"""
import importlib
import os

import pytest

from tests.test_cli import ENTRY_POINTS, action_help, entry_parser

# Arguments each script requires (placed before the flag under test; a later flag wins).
REQUIRED = {
    'test': ['--weights', 'base.pth.tar'],
    'predict': ['video.mp4', '--weights', 'base.pth.tar'],
    'tools.export': ['--weights', 'base.pth.tar', '--video', 'video.mp4'],
    'tools.check_videos': ['val.txt', 'frames'],
    'tools.extract_frames': ['videos', 'frames'],
    'tools.plot_curves': ['run_a', 'run_b'],
}

# (script, release spelling, alias, value tokens): the alias must parse as the release spelling.
ALIASES = [
    ('main', '--batch-size', '--batch_size', ['16']),
    ('main', '--batch-size', '-b', ['16']),
    ('test', '--batch_size', '--batch-size', ['16']),
    ('predict', '--batch_size', '--batch-size', ['16']),
    ('main', '--workers', '-j', ['3']),
    ('test', '--workers', '-j', ['3']),
    ('predict', '--workers', '-j', ['3']),
    ('tools.check_videos', '--num_workers', '--workers', ['3']),
    ('tools.check_videos', '--num_workers', '-j', ['3']),
    ('tools.extract_frames', '--num_workers', '--workers', ['3']),
    ('tools.extract_frames', '--num_workers', '-j', ['3']),
    ('test', '--weights', '--checkpoints', ['a.pth.tar,b.pth.tar']),
    ('predict', '--weights', '--checkpoint', ['a.pth.tar']),
    ('CAM', '--weights', '--checkpoint', ['a.pth.tar']),
    ('tools.export', '--weights', '--checkpoint', ['a.pth.tar']),
    ('test', '--coeff', '--ensemble_weights', ['1,0.5']),
    ('average_scores', '--weights', '--ensemble_weights', ['1', '0.5']),
    ('average_scores', '--weights', '--coeff', ['1', '0.5']),
    ('main', '--dropout', '--dp', ['0.3']),
    ('main', '--dense_sample', '--dense_window', []),
    ('test', '--dense_sample', '--dense_clips', []),
    ('predict', '--dense_sample', '--dense_clips', []),
    ('test', '--dense_sample_num', '--test_clips', ['4']),
    ('predict', '--dense_sample_num', '--test_clips', ['4']),
    ('tools.plot_curves', '--labels', '--legend', ['a', 'b']),
]

# The release's spellings that mean two things in two scripts: kept (the seed README uses
# them), with a clear name for each meaning, accepted beside them in every script of it.
TWO_MEANINGS = {
    '--weights': {'--checkpoints': ['test'], '--checkpoint': ['predict', 'CAM', 'tools.export'],
                  '--ensemble_weights': ['average_scores']},
    '--dense_sample': {'--dense_window': ['main'], '--dense_clips': ['test', 'predict']},
}

# Every other spelling used by two or more scripts: its one meaning, and the scripts using it.
MODEL_SCRIPTS = ['main', 'test', 'predict', 'CAM', 'tools.export']
VIEW_SCRIPTS = ['test', 'predict']
ALL = ENTRY_POINTS
MEANINGS = {
    '-h': ('help', ALL),
    '--help': ('help', ALL),
    '--dataset': ('dataset name or .json file', MODEL_SCRIPTS + ['average_scores',
                                                                 'tools.extract_frames']),
    '--dataset_path': ('folder holding the dataset folders', MODEL_SCRIPTS),
    '--video_backend': ('video decoder', ['main', 'test', 'predict', 'CAM']),
    '-j': ('worker processes', ['main', 'test', 'predict', 'tools.check_videos',
                                'tools.extract_frames']),
    '--workers': ('worker processes', ['main', 'test', 'predict', 'tools.check_videos',
                                       'tools.extract_frames']),
    '--num_workers': ('worker processes', ['tools.check_videos', 'tools.extract_frames']),
    '--loader_timeout': ('seconds without a batch before the run stops', ['main', 'test',
                                                                          'predict']),
    '--type': ('temporal type', MODEL_SCRIPTS + ['tools.bench_export', 'tools.flops']),
    '--arch': ('ResNet backbone', MODEL_SCRIPTS + ['tools.bench_export', 'tools.flops']),
    '--input_size': ('network input side', MODEL_SCRIPTS + ['tools.flops']),
    '--gpus': ('GPU ids', MODEL_SCRIPTS),
    '--trust_checkpoint': ('unpickle checkpoints in full', MODEL_SCRIPTS),
    '--checkpoint': ('one checkpoint file', ['predict', 'CAM', 'tools.export']),
    '--num_segments': ('T, frames per clip', ['main', 'CAM', 'tools.export', 'tools.flops',
                                              'tools.bench_export', 'tools.bench_model']),
    '--test_segments': ('T, frames per clip', VIEW_SCRIPTS),
    '--size': ('network input side', ['tools.bench_export', 'tools.bench_model']),
    '--batch_size': ('clips per batch', ['main'] + VIEW_SCRIPTS),
    '--batch-size': ('clips per batch', ['main'] + VIEW_SCRIPTS),
    '--test_crops': ('crops per clip', VIEW_SCRIPTS),
    '--full_res': ('crops of input_size*256/224', VIEW_SCRIPTS + ['tools.export']),
    '--twice_sample': ('2 clips per video', VIEW_SCRIPTS),
    '--dense_clips': ('K clips per video', VIEW_SCRIPTS),
    '--dense_sample_num': ('K, clips per video', VIEW_SCRIPTS),
    '--test_clips': ('K, clips per video', VIEW_SCRIPTS),
    '--test_sampling': ('the clips of each video (ops.dataset.TEST_SAMPLINGS)', VIEW_SCRIPTS),
    '--test_seed': ('seed of a seeded test sampling and of the shuffled frame order',
                    VIEW_SCRIPTS),
    '--frame_order': ("order of each clip's sampled frames (ops.dataset.FRAME_ORDERS)",
                      VIEW_SCRIPTS),
    '--softmax': ('softmax before the score is reported', VIEW_SCRIPTS + ['average_scores']),
    '--coeff': ('ensemble weights', ['test', 'average_scores']),
    '--ensemble_weights': ('ensemble weights', ['test', 'average_scores']),
    '--compile': ('torch.compile the model', ['main'] + VIEW_SCRIPTS),
    '--mas_form': ('how MAS blocks compute', ['main'] + VIEW_SCRIPTS),
    '--threads': ('CPU threads of the benchmark', ['tools.bench_model', 'tools.bench_export']),
    '--channels_last': ('NHWC memory format', ['main'] + VIEW_SCRIPTS + ['tools.bench_model']),
    '--amp': ('mixed precision', ['main', 'tools.bench_model']),
    '--categories': ('class names file', ['predict', 'tools.export']),
    '--csv_file': ("'video_id;class' lines", ['test', 'average_scores']),
    '--submission': ('Something-Something V2 submission file', VIEW_SCRIPTS),
    '--json': ('results as JSON', ['test', 'predict', 'tools.bench_model', 'tools.compare_scores',
                                   'tools.summarize_runs']),
    '--csv': ('rows as CSV', ['predict', 'tools.compare_scores']),
    '--device': ('torch device', ['predict', 'tools.bench_model']),
    '--video': ('one video: file or frame folder (CAM: or id)', ['CAM', 'tools.export']),
    '--output': ('file to write', ['CAM', 'tools.export', 'tools.frames_to_video']),
    '--out': ('file to write', ['tools.draw_architecture', 'tools.gpu_check',
                                'tools.plot_curves']),
    '--epochs': ('training epochs', ['main', 'tools.fault_injection']),
    '--seed': ('seed of the script\'s random choices', ['main', 'tools.compare_scores',
                                                        'tools.fault_injection']),
    '--repeats': ('timed rounds', ['tools.bench_model', 'tools.gpu_check']),
    '--write-clean': ('write the list without the bad videos',
                      ['tools.check_videos', 'tools.extract_frames']),
}

# A spelling is a switch everywhere or takes a value everywhere, but for these (reported).
SWITCH_HERE_VALUE_THERE = {'--amp'}  # main.py: on/off (fp16); bench_model: none|fp16|bf16


def parser_of(script):
    """The parser `script` parses its command line with (caught in its main when the script
    has no build_parser)."""
    if script == 'main':
        return importlib.import_module('opts').build_parser()
    module = importlib.import_module(script)
    if hasattr(module, 'build_parser'):
        return module.build_parser()
    with pytest.MonkeyPatch.context() as patch:
        return entry_parser(script, patch)


def parse(parser, script, argv):
    return vars(parser.parse_args(REQUIRED.get(script, []) + argv))


def spellings():
    """{option string: {script: action}} over every entry point."""
    found = {}
    for script in ENTRY_POINTS:
        for action in parser_of(script)._actions:
            for option in action.option_strings:
                found.setdefault(option, {})[script] = action
    return found


@pytest.mark.parametrize('script,release,alias,values', ALIASES,
                         ids=[f'{s}:{a}' for s, _, a, _ in ALIASES])
def test_alias_parses_as_the_release_spelling(script, release, alias, values):
    parser = parser_of(script)
    by_release = parse(parser, script, [release] + values)
    assert parse(parser, script, [alias] + values) == by_release
    assert by_release != parse(parser, script, [])  # the value reached the namespace
    action = next(a for a in parser._actions if release in a.option_strings)
    assert alias in action.option_strings
    shown = action_help(parser, action).replace(',', ' ').split()
    assert release in shown and alias in shown, shown


def test_average_scores_takes_test_py_comma_separated_weights():
    parser = parser_of('average_scores')
    assert parse(parser, 'average_scores', ['--coeff', '1,0.5']) == \
        parse(parser, 'average_scores', ['--weights', '1', '0.5'])
    assert parse(parser, 'average_scores', ['--weights', '2,', '0.25,1'])['weights'] == \
        [2.0, 0.25, 1.0]
    for bad in (['--coeff', '1,x'], ['--coeff', ',']):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)


def test_release_spellings_with_two_meanings_have_a_clear_name_everywhere():
    found = spellings()
    for release, clear_names in TWO_MEANINGS.items():
        holders = {s for scripts in clear_names.values() for s in scripts}
        assert set(found[release]) == holders, release
        for clear, scripts in clear_names.items():
            for script in scripts:
                beside = set(found[release][script].option_strings) & set(clear_names)
                assert beside == {clear}, (script, release, beside)


def test_no_flag_spelling_means_two_things():
    found = spellings()
    shared = {option for option, holders in found.items() if len(holders) > 1}
    undeclared = sorted(shared - set(MEANINGS) - set(TWO_MEANINGS))
    assert not undeclared, f'flags in several scripts without a meaning in MEANINGS: {undeclared}'
    for option, (_, scripts) in MEANINGS.items():
        assert set(found.get(option, {})) == set(scripts), option
    for option in shared - SWITCH_HERE_VALUE_THERE:
        kinds = {script: action.nargs == 0 for script, action in found[option].items()}
        assert len(set(kinds.values())) == 1, (option, kinds)


def test_unsorted_lr_steps_are_refused_before_anything_is_created(tmp_path, capsys):
    """The release decays at whichever steps are reached, so `30 40 60 50` gives other lrs
    after epoch 50 than `30 40 50 60` (docs/differences.md): a typo, refused for every
    schedule in one line."""
    import main as train_main
    from ops.optim import LR_SCHEDULES
    for lr_type in LR_SCHEDULES:
        with pytest.raises(SystemExit) as stop:
            train_main.main(['--lr_type', lr_type, '--lr_steps', '30', '40', '60', '50',
                             '--root_log', str(tmp_path), '--root_checkpoint', str(tmp_path)])
        assert stop.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.endswith('error: argument --lr_steps: must be in increasing order, got '
                            '30 40 60 50'), err
    assert os.listdir(tmp_path) == []
    assert parse_args_of_main(['--lr_steps', '30', '30', '50']).lr_steps == [30, 30, 50]


def parse_args_of_main(argv):
    from opts import parse_args
    return parse_args(argv)
