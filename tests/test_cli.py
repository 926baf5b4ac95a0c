"""The ``timm-stra`` entry point: its usage, its version, and an unknown command."""
import timm
import torch

import timm_stra
from timm_stra.cli import main as cli_main


def test_version_names_the_package_timm_and_torch(capsys):
    for flag in ('--version', '-V'):
        assert cli_main([flag]) == 0
        assert capsys.readouterr().out.strip() == (
            f'timm-stra {timm_stra.__version__} (timm {timm.__version__}, torch {torch.__version__})')


def test_usage_lists_every_command_and_an_unknown_one_is_named(capsys):
    assert cli_main([]) == 0
    usage = capsys.readouterr().out
    for command in ('models', 'convert', 'train', 'eval', 'table', 'bench', 'modes'):
        assert f'\n  {command} ' in usage
    assert cli_main(['mode']) == 2
    assert "timm-stra: unknown command 'mode'" in capsys.readouterr().err


def test_train_without_a_task_lists_the_tasks(capsys):
    """``timm-stra train --help`` printed one line to stderr."""
    assert cli_main(['train', '--help']) == 0
    out = capsys.readouterr().out
    for task, model in (('reid', 'stra_resnet50_reid'), ('face', 'stra_resnet50_face'), ('fer', 'stra_resnet50_fer')):
        assert f'\n  {task} ' in out and f'; model {model}\n' in out
    assert "timm-stra train TASK -h" in out
    assert cli_main(['train']) == 2 and 'tasks:' in capsys.readouterr().err
    assert cli_main(['train', 'rei']) == 2
    assert "timm-stra train: no task 'rei': choose reid, face, fer" in capsys.readouterr().err
