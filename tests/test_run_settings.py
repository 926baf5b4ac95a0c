"""What ``--resume`` may change: options that decide what a run learns are refused, where it runs is free."""
import re

import pytest

from timm_stra.tasks.run_settings import check_resumed_settings, run_settings
from timm_stra.tasks.train_options import build_parser
from timm_stra.tasks.usage import UsageError

FIRST = ['--data', '/data/market', '--output', 'runs/a']  # the run as it was started (the ReID recipe)


def _args(*options):
    return build_parser('reid').parse_args([*FIRST, *options])


@pytest.mark.parametrize('options, named', [
    (['--batch-size', '16'], '--batch-size 16 (the run: 32)'),
    (['--weight-decay', '0.001'], '--weight-decay 0.001 (the run: 0.0005)'),
    (['--lr', '0.01'], '--lr 0.01 (the run: 0.0003)'),
    (['--opt', 'sgd'], '--opt sgd (the run: adam)'),
    (['--model-kwargs', 'mode=none'], '--model-kwargs mode="none" (the run: (none))'),
    (['--seed', '1'], '--seed 1 (the run: 42)'),
])
def test_options_that_change_what_the_run_learns_are_refused(options, named):
    saved = run_settings(_args())
    with pytest.raises(UsageError, match=re.escape(f'--resume runs/a: {named}. A resumed run continues')):
        check_resumed_settings(saved, _args(*options), 'runs/a')


def test_every_changed_option_is_named():
    saved = run_settings(_args())
    with pytest.raises(UsageError, match=re.escape('--batch-size 64 (the run: 32); --weight-decay 0.0 (the run: '
                                                   '0.0005).')):
        check_resumed_settings(saved, _args('--weight-decay', '0', '--batch-size', '64'), 'runs/a')


def test_where_the_run_reads_writes_and_runs_may_change():
    """Data and output folders, devices, loader processes, what is shown and kept, evaluation, and --epochs (which
    a resumed run may extend)."""
    saved = run_settings(_args())
    moved = build_parser('reid').parse_args([
        '--data', '/elsewhere/market', '--output', 'runs/b', '--resume', 'runs/a', '--workers', '0', '--device',
        'cpu', '--no-progress', '--no-check', '--skip-bad', '--eval-interval', '1', '--eval-batch-size', '7',
        '--keep', '5', '--epochs', '120', '--backbone-init', ''])
    check_resumed_settings(saved, moved, 'runs/a')
    assert run_settings(moved) == saved


def test_a_run_of_another_task_is_named_as_such():
    """Not as the dozen recipe options that differ with it."""
    saved = run_settings(_args())
    saved['task'] = 'reid'
    fer = build_parser('fer').parse_args(['--data', 'fer2013.csv'])
    fer.task = 'fer'
    with pytest.raises(UsageError, match=re.escape('--resume runs/a: a reid run, not fer: continue it with timm-stra '
                                                   'train reid and its options (its args.json).')):
        check_resumed_settings(saved, fer, 'runs/a')
