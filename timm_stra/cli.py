"""``timm-stra`` command line: one subcommand per tool, each a module with ``main(argv)``."""
import importlib
import os
import sys
from typing import List, Optional

# subcommand -> (module with main(argv), one-line help)
COMMANDS = {
    'models': ('timm_stra.tools.summary', 'build every registered model; table of params, GMACs, output shape'),
    'convert': ('timm_stra.convert.cli', "the authors' checkpoint (.pth.tar) -> Hub-ready folder for local-dir:"),
    'train': ('timm_stra.tasks.train', "train reid|face|fer with the paper's recipe (torchrun for DDP)"),
    'eval': ('timm_stra.tasks.evaluate', "score a checkpoint for reid|face|fer with the paper's metrics"),
    'table': ('timm_stra.benchmarks.ablation', "reproduce the paper's params/FLOPs ablation table (--check)"),
    'bench': ('timm_stra.benchmarks.speed', 'throughput and peak memory: StRA, twin, limit, reference, SASA + Mode'),
    'modes': ('timm_stra.tools.mode_maps',
              "what the modes see: a picture of every operator's spatial masks on an image"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ['usage: timm-stra <command> [options]   (timm-stra --version: the versions in use)', '', 'commands:']
    lines += [f'  {name:<{width}}  {help_}' for name, (_, help_) in COMMANDS.items()]
    lines += ['', "Run 'timm-stra <command> --help' for a command's options."]
    return '\n'.join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    try:
        return _run(sys.argv[1:] if argv is None else argv)
    except BrokenPipeError:  # what reads the output stopped early (`| head`): no traceback, as other tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # (Python flushes stdout at exit)
        return 1


def _run(argv: List[str]) -> int:
    if not argv or argv[0] in ('-h', '--help'):
        print(_usage())
        return 0
    if argv[0] in ('-V', '--version'):
        from . import __version__
        import timm
        import torch
        print(f'timm-stra {__version__} (timm {timm.__version__}, torch {torch.__version__})')
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"timm-stra: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    return importlib.import_module(COMMANDS[name][0]).main(rest) or 0


if __name__ == '__main__':
    sys.exit(main())
