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
