"""The options of ``timm-stra train TASK``: its parser (the paper's recipe as defaults), the model arguments, optimizer
and scheduler they make, and the checks of the values that need a model (``--model``, ``--model-kwargs``,
``--trainable-early``, ``--opt``, ``--sched``), made before any data is read so that a mistyped option costs
seconds, not the minutes of checking a data set."""
import argparse
import json
from typing import Any, Dict

import timm
import torch
from torch import nn
from timm.models import parse_model_name
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2

from ..arguments import DefaultsHelpFormatter, at_least, fraction, non_negative_float, positive_float
from .distributed import task_device
from .freeze import check_trainable
from .recipes import get_recipe
from .usage import UsageError


def _kv(text: str):
    """'key=value' with value parsed as JSON when possible ('layers=[1,1,1,1]', 'drop_rate=0.1')."""
    key, sep, value = text.partition('=')
    if not sep:
        raise argparse.ArgumentTypeError(f'expected key=value, got {text!r}')
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def build_parser(task: str) -> argparse.ArgumentParser:
    """Options of ``timm-stra train TASK``, defaulting to the paper's recipe for the task."""
    r = get_recipe(task)
    p = argparse.ArgumentParser(prog=f'timm-stra train {task}', formatter_class=DefaultsHelpFormatter,
                                description=f"Train a {task} model; the defaults are the paper's recipe for {task}.")
    p.add_argument('--data', required=True, help={
        'reid': 'Market-1501 / DukeMTMC-reID folder (bounding_box_train/, query/, bounding_box_test/)',
        'face': 'folder of identity folders; the insightface *.bin files in it are the verification sets',
        'fer': 'fer2013.csv or the folder holding it'}[task])
    p.add_argument('--output', default=None, help='run folder (checkpoints, metrics.jsonl); default: the run '
                   f'--resume continues, else output/{task}')
    p.add_argument('--resume', default=None, help='run folder or checkpoint folder to continue from')
    g = p.add_argument_group('model')
    g.add_argument('--model', default=r.model, help='any timm model name, e.g. the twin resnet50_' + task)
    g.add_argument('--model-kwargs', nargs='*', type=_kv, default=[], metavar='KEY=VALUE',
                   help="extra timm.create_model arguments, e.g. mode=no_interaction 'layers=[3,4,6,3]'")
    g.add_argument('--input-size', type=at_least(1), nargs=2, default=None, metavar=('H', 'W'),
                   help='input height and width (default: the model\'s pretrained_cfg); face models are built for it')
    g.add_argument('--backbone-init', default=r.backbone_init, metavar='TAG|FILE',
                   help="initial weights, loaded strictly by timm's pretrained machinery: a pretrained tag of "
                        "--model (tv_in1k: torchvision's ImageNet ResNet-50, downloaded once; a1_in1k), a weights "
                        "file of the model's architecture, or '' for random weights")
    g.add_argument('--sync-bn', action='store_true', help='SyncBatchNorm under DDP')
    g = p.add_argument_group('optimisation')
    g.add_argument('--epochs', type=at_least(1), default=r.epochs, help='epochs in total')
    g.add_argument('--batch-size', type=at_least(2), default=r.batch_size,
                   help='per process (2 or more: BatchNorm)')
    g.add_argument('--opt', default=r.opt, help='timm optimizer name')
    g.add_argument('--lr', type=non_negative_float, default=r.lr, help='initial learning rate')
    g.add_argument('--weight-decay', type=non_negative_float, default=r.weight_decay,
                   help='weight decay (on every parameter, as the official run)')
    g.add_argument('--wd-skip-bias-norm', action='store_true',
                   help="no weight decay on biases and norm layers (timm's usual filter)")
    g.add_argument('--momentum', type=fraction(include_one=False), default=r.momentum, help='SGD momentum')
    g.add_argument('--sched', default=r.sched, help='timm scheduler name (stepped per epoch)')
    g.add_argument('--decay-epochs', type=non_negative_float, default=r.decay_epochs,
                   help="'step': epochs between decays")
    g.add_argument('--decay-milestones', type=at_least(1), nargs='*', default=list(r.decay_milestones),
                   help="'multistep': epochs (counted from 1) from which the rate is multiplied again")
    g.add_argument('--decay-rate', type=positive_float, default=r.decay_rate, help='learning-rate factor at each decay')
    g.add_argument('--warmup-epochs', type=at_least(0), default=0, help='linear warm-up epochs (not in the paper)')
    g.add_argument('--smoothing', type=fraction(include_one=False), default=r.smoothing, help='label smoothing')
    g.add_argument('--div-weight', type=non_negative_float, default=r.div_weight, help='weight of the diversity loss')
    g.add_argument('--freeze-epochs', type=at_least(0), default=r.freeze_epochs,
                   help='epochs during which only --trainable-early modules train')
    g.add_argument('--trainable-early', nargs='*', default=list(r.trainable_early),
                   help='modules that train during the first --freeze-epochs')
    g.add_argument('--clip-grad', type=positive_float, default=None, help='gradient clipping (off by default)')
    g.add_argument('--clip-mode', default='norm', choices=('norm', 'value', 'agc'))
    g.add_argument('--amp', action='store_true', help='mixed precision (float16 on CUDA, bfloat16 on CPU)')
    g = p.add_argument_group('data')
    g.add_argument('--re-prob', type=fraction(), default=r.re_prob, help='random erasing probability')
    g.add_argument('--crop-padding', type=at_least(0), default=r.crop_padding, help='pad then random crop (0: off)')
    g.add_argument('--hflip', type=fraction(), default=0.5, help='horizontal flip probability')
    g.add_argument('--workers', type=at_least(0), default=4, help='data loading processes per rank')
    g.add_argument('--skip-bad', action='store_true', help='skip (and count) unreadable images / rows')
    g.add_argument('--no-check', action='store_true',
                   help='do not decode every image before training (a broken one then stops the run when it is '
                        'loaded: --skip-bad cannot skip it)')
    g.add_argument('--bins', nargs='*', default=(), help='face: verification .bin files (default: *.bin in --data)')
    g = p.add_argument_group('run')
    g.add_argument('--eval-interval', type=at_least(0), default=r.eval_interval,
                   help='evaluate every N epochs (0: only at the end)')
    g.add_argument('--eval-batch-size', type=at_least(1), default=r.eval_batch_size, help='batch size when evaluating')
    g.add_argument('--keep', type=at_least(0), default=2, help='checkpoints kept (0: all)')
    g.add_argument('--seed', type=at_least(0, 2 ** 32 - 1), default=42,
                   help='random seed (rank r augments with seed + r)')
    g.add_argument('--device', default=None, type=task_device,
                   help='cpu, cuda or cuda:N (default: cuda if available)')
    g.add_argument('--no-progress', action='store_true', help='no progress bars or per-epoch lines')
    return p


def create_optimization(model: nn.Module, args: argparse.Namespace):
    """timm's optimizer and per-epoch learning-rate scheduler for the options in ``args``."""
    optimizer = _create_optimizer(model, args)
    return optimizer, _create_scheduler(optimizer, args)


def _create_optimizer(model: nn.Module, args: argparse.Namespace) -> torch.optim.Optimizer:
    return create_optimizer_v2(model, args.opt, lr=args.lr, weight_decay=args.weight_decay, momentum=args.momentum,
                               filter_bias_and_bn=args.wd_skip_bias_norm)


def _create_scheduler(optimizer: torch.optim.Optimizer, args: argparse.Namespace):
    scheduler, _ = create_scheduler_v2(
        optimizer, args.sched, num_epochs=args.epochs, decay_epochs=args.decay_epochs,
        decay_milestones=args.decay_milestones, decay_rate=args.decay_rate, warmup_epochs=args.warmup_epochs)
    return scheduler


# timm.create_model arguments the training run sets itself, or that would build a model it cannot train
RESERVED_MODEL_KWARGS = {
    'num_classes': 'the training set gives the classes',
    'pretrained': 'the initial weights are --backbone-init',
    'pretrained_cfg': 'the initial weights are --backbone-init',
    'pretrained_cfg_overlay': 'the initial weights are --backbone-init',
    'checkpoint_path': 'the initial weights are --backbone-init FILE',
    'features_only': 'training needs the classifier',
    'out_indices': 'training needs the classifier',
}


def check_model_kwargs(args: argparse.Namespace) -> None:
    """``UsageError`` for a ``--model-kwargs`` key the run sets itself (``RESERVED_MODEL_KWARGS``), a feature-map
    ``global_pool=''``, or a face ``img_size`` other than ``--input-size`` (they were tracebacks at the first step, or
    silently replaced)."""
    given = dict(args.model_kwargs)
    reserved = sorted(given.keys() & RESERVED_MODEL_KWARGS.keys())
    if reserved:
        why = '; '.join(f'{key}: {RESERVED_MODEL_KWARGS[key]}' for key in reserved)
        raise UsageError(f'--model-kwargs {" ".join(reserved)}: arguments timm-stra train does not take ({why}).')
    if given.get('global_pool', None) == '':
        raise UsageError("--model-kwargs global_pool='': the classifier needs pooled features; give a pooling (avg, "
                         'max, avgmax, catavgmax) or leave it out.')
    size = given.get('img_size')
    if args.task == 'face' and args.input_size is not None and size is not None:
        size = [size, size] if isinstance(size, int) else list(size)
        if size != list(args.input_size):
            raise UsageError(f'--model-kwargs img_size={size} and --input-size {" ".join(map(str, args.input_size))}: '
                             'a face model takes only the size it is built for; give one of them.')


def model_kwargs(args, num_classes: int) -> Dict[str, Any]:
    kwargs = dict(args.model_kwargs)
    kwargs['num_classes'] = num_classes
    if args.input_size is not None and args.task == 'face':  # the face head is built for its input size
        kwargs.setdefault('img_size', list(args.input_size))
    return kwargs


def model_for_options(args: argparse.Namespace) -> nn.Module:
    """The model ``--model`` and ``--model-kwargs`` build (with one class), or a ``UsageError`` saying why not."""
    check_model_kwargs(args)
    unknown = UsageError(f'--model {args.model}: timm has no such model; timm-stra models lists ours, '
                         'timm.list_models() all of them.')
    source, name = parse_model_name(args.model)
    if source is None and not timm.is_model(name):
        raise unknown
    try:
        return timm.create_model(args.model, **model_kwargs(args, 1))
    except RuntimeError as e:  # hf-hub: and local-dir: name theirs in a config timm reads itself
        if 'Unknown model' not in str(e):
            raise
        raise unknown from e
    except (TypeError, ValueError) as e:
        kwargs = ' '.join(f'{k}={json.dumps(v)}' for k, v in args.model_kwargs)
        raise UsageError(f'--model {args.model}' + (f' --model-kwargs {kwargs}' if kwargs else '') + f': {e}') from e


def check_freeze(args: argparse.Namespace, model: nn.Module) -> None:
    """With ``--freeze-epochs``, ``--trainable-early`` naming modules with parameters."""
    if args.freeze_epochs:
        try:
            check_trainable(model, args.trainable_early)
        except ValueError as e:
            raise UsageError(f'--trainable-early: {e}') from e


def check_optimization(args: argparse.Namespace, model: nn.Module) -> None:
    """``--opt`` and ``--sched`` that timm knows, and a step schedule with a period: refused before the data is read
    (timm's errors came after it, a step schedule of period 0 as a division by zero at the first epoch's end)."""
    if args.sched == 'step' and args.decay_epochs <= 0:
        raise UsageError(f'--sched step with --decay-epochs {args.decay_epochs:g}: give the epochs between decays '
                         '(above 0), or another --sched.')
    try:
        optimizer = _create_optimizer(model, args)
    except ValueError as e:
        raise UsageError(f'--opt {args.opt}: {e} (timm.optim.list_optimizers() names them).') from e
    try:
        _create_scheduler(optimizer, args)
    except ValueError as e:
        raise UsageError(f'--sched {args.sched}: {e} (see timm.scheduler.create_scheduler_v2 for its names).') from e
