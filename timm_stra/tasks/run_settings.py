"""What a resumed training run may change: the options that decide its course are kept with each checkpoint and
must be given again as they were (``--resume`` continues the run, it does not start another)."""
import argparse
import json
from typing import Any, Dict

from .usage import UsageError

# options that do not change what a run learns: where things are, how fast they are read, what is shown and
# kept, evaluation; and --epochs, which a resumed run may extend (the learning-rate schedule is restored from the
# checkpoint, as it was built for the run's first --epochs)
FREE_ON_RESUME = frozenset((
    'data', 'output', 'resume', 'backbone_init', 'workers', 'device', 'no_progress', 'no_check', 'skip_bad', 'bins',
    'eval_interval', 'eval_batch_size', 'keep', 'epochs'))


def run_settings(args: argparse.Namespace) -> Dict[str, Any]:
    """The options of ``args`` that decide the run's course, as plain JSON values (for a checkpoint's state)."""
    return json.loads(json.dumps({k: v for k, v in sorted(vars(args).items()) if k not in FREE_ON_RESUME},
                                 default=str))


def check_resumed_settings(saved: Dict[str, Any], args: argparse.Namespace, checkpoint) -> None:
    """Raise ``UsageError`` naming every option of ``args`` that differs from the ``saved`` ``run_settings``."""
    now = run_settings(args)
    changed = sorted(k for k in saved.keys() | now.keys() if saved.get(k) != now.get(k))
    if changed:
        options = '; '.join(f'--{k.replace("_", "-")} {_shown(now.get(k))} (the run: {_shown(saved.get(k))})'
                            for k in changed)
        raise UsageError(f'--resume {checkpoint}: {options}. A resumed run continues with the settings it was '
                         'started with (its args.json): give them again, or start a new run with another --output.')


def _shown(value) -> str:
    if isinstance(value, list):
        return ' '.join(str(v) for v in value) or '(none)'
    return 'off' if value is False else 'on' if value is True else str(value)
