"""What a resumed training run may change: the options that decide its course are kept with each checkpoint and
must be given again as they were (``--resume`` continues the run, it does not start another)."""
import argparse
import json
from typing import Any, Dict, Optional, Sequence

from .usage import UsageError

# options that do not change what a run learns: where things are, what is shown and kept, evaluation; --epochs,
# which a resumed run may extend (the learning-rate schedule is restored from the checkpoint, as it was built for
# the run's first --epochs); and where it runs: --device and --workers, free so that a run can move to another
# machine, though a resumed run repeats the uninterrupted one exactly only with the same (every data loading
# process seeds its own augmentations, and the batches go to them in turn)
FREE_ON_RESUME = frozenset((
    'data', 'output', 'resume', 'backbone_init', 'workers', 'device', 'no_progress', 'no_check', 'skip_bad', 'bins',
    'eval_interval', 'eval_batch_size', 'keep', 'epochs'))


def run_settings(args: argparse.Namespace) -> Dict[str, Any]:
    """The options of ``args`` that decide the run's course, as plain JSON values (for a checkpoint's state);
    ``--model-kwargs`` as a dict (the last of a key given twice, as the model gets them), in any order."""
    settings = {k: v for k, v in vars(args).items() if k not in FREE_ON_RESUME}
    if 'model_kwargs' in settings:
        settings['model_kwargs'] = dict(sorted(dict(settings['model_kwargs']).items()))
    return json.loads(json.dumps(dict(sorted(settings.items())), default=str))


def check_resumed_settings(saved: Dict[str, Any], args: argparse.Namespace, checkpoint) -> None:
    """Raise ``UsageError`` naming every option of ``args`` that differs from the ``saved`` ``run_settings``."""
    now = run_settings(args)
    if saved.get('task') != now.get('task'):  # (every recipe option would differ too)
        raise UsageError(f'--resume {checkpoint}: a {saved.get("task")} run, not {now.get("task")}: continue it '
                         f'with timm-stra train {saved.get("task")} and its options (its args.json).')
    changed = sorted(k for k in saved.keys() | now.keys() if saved.get(k) != now.get(k))
    if changed:
        options = '; '.join(f'{_option(k)} {_shown(now.get(k))} (the run: {_shown(saved.get(k))})' for k in changed)
        raise UsageError(f'--resume {checkpoint}: {options}. A resumed run continues with the settings it was '
                         'started with (its args.json): give them again, or start a new run with another --output.')


def _option(key: str) -> str:
    return 'the task' if key == 'task' else f'--{key.replace("_", "-")}'


def _shown(value) -> str:
    """A setting as it is given on the command line."""
    if isinstance(value, dict):  # --model-kwargs
        return ' '.join(f'{k}={json.dumps(v)}' for k, v in value.items()) or '(none)'
    if isinstance(value, list):
        return ' '.join(str(v) for v in value) or '(none)'
    return 'off' if value is False else 'on' if value is True else '(not given)' if value is None else str(value)


def check_resumed_classes(saved: Optional[Sequence[str]], classes: Sequence[str], data, checkpoint) -> None:
    """Raise ``UsageError`` unless the training set's ``classes`` (names in label order) are those the resumed run
    was trained on (``saved``; None in checkpoints written before they were kept): with other identities the
    classifier's rows would stand for other people, a changed count failed in ``load_state_dict``."""
    if saved is None or list(saved) == list(classes):
        return
    if len(saved) != len(classes):
        found = f'{len(classes)} classes, the run was trained on {len(saved)}'
    else:
        others = [name for name, was in zip(classes, saved) if name != was]
        found = f'{len(others)} of its {len(classes)} classes are not the run\'s (first: {others[0]})'
    raise UsageError(f'--data {data}: {found} (--resume {checkpoint}). A resumed run trains on the classes it '
                     'started with: give its data, or start a new run from its weights (--backbone-init).')
