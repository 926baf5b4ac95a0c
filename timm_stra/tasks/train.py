"""``timm-stra train reid|face|fer --data DIR``: the paper's recipes (``recipes.py``) with timm's
optimizers, schedulers, transforms, random erasing and label smoothing; the diversity loss; AMP;
DDP under ``torchrun``; atomic, resumable checkpoints; per-epoch JSONL metrics.

Outputs in ``--output`` (rank 0 only): ``args.json``, ``metrics.jsonl`` (one line per epoch) and
``checkpoints/`` (see ``checkpoint.py``). ``--resume OUTPUT`` continues from the latest checkpoint
to the same state an uninterrupted run would have (checkpoints are taken at epoch ends, before
evaluating), given the run's settings again (``run_settings.py``). A new run into another run's folder is refused.
"""
import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm
from timm.loss import LabelSmoothingCrossEntropy
from timm.utils import dispatch_clip_grad

from ..atomic import atomic_write_text, check_folder_target
from ..checkpoint_file import CheckpointError
from ..diversity import diversity_loss
from .backbone_init import create_model, parse_backbone_init
from .checkpoint import (MODEL_FILE, STATE_FILE, data_config_for, load_checkpoint_data_config, load_checkpoint_weights,
                         load_training_state, point_latest, resolve_checkpoint, run_folder_of, save_checkpoint)
from .data import BadDataError, FaceBinError
from .distributed import (DistEnv, all_gather_objects, all_reduce_sum, broadcast_buffers, check_share,
                          init_distributed, shutdown)
from .evaluate import evaluate, metrics_table
from .freeze import set_trainable
from .recipes import TASKS, get_recipe
from .rng import rng_state, seed_all, set_rng_state
from .run_settings import check_resumed_classes, check_resumed_settings, run_settings
from .task_data import load_task_data
from .train_options import (build_parser, check_freeze, check_optimization, create_optimization, model_for_options,
                            model_kwargs)
from .transforms import eval_transform, train_transform
from .usage import UsageError


def _logged_up_to(text: str, epoch: int) -> List[str]:
    """The lines of a metrics log for epochs up to ``epoch``; a line cut short by a crash while it was appended
    (not JSON) is left out, as it would be rewritten."""
    kept = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record['epoch'] <= epoch:
            kept.append(line)
    return kept


def _refuse_earlier_run(out: Path, env: DistEnv) -> None:
    """A new run into a folder holding another's log or checkpoints would mix the two (and the newest checkpoint
    kept could be the old run's): refused, as rank 0 sees the folder."""
    earlier = [name for name in ('metrics.jsonl', 'checkpoints') if (out / name).exists()]
    earlier = all_gather_objects(earlier, env)[0]
    if earlier:
        raise UsageError(f'{out} already holds a run ({" and ".join(earlier)}): pass --resume {out} to continue it, '
                         'or give another --output.')


class Trainer:
    """One training run; ``run()`` trains from epoch ``start_epoch`` to ``args.epochs``."""

    def __init__(self, args: argparse.Namespace, env: DistEnv):
        self.args, self.env = args, env
        if args.output is None:  # a resumed run goes on in its own folder (it went to output/TASK, split in two)
            resumed_run = run_folder_of(resolve_checkpoint(args.resume)) if args.resume else None
            args.output = str(resumed_run or Path('output') / args.task)
        self.out = Path(args.output)
        try:
            check_folder_target(self.out)
        except OSError as e:
            raise UsageError(f'--output {e}') from None
        if not args.resume:
            _refuse_earlier_run(self.out, env)
        self._build(args)

    def _build(self, args) -> None:
        env = self.env
        resumed = trained_with = None
        if args.resume:  # (before the data is read: a changed setting or a damaged file is refused at once)
            checkpoint = resolve_checkpoint(args.resume)
            resumed = checkpoint, load_training_state(checkpoint), load_checkpoint_weights(checkpoint)
            trained_with = load_checkpoint_data_config(checkpoint)
            # (checkpoints written before the settings were kept hold only the seed)
            saved = resumed[1].get('settings', {**run_settings(args), 'seed': resumed[1].get('seed')})
            check_resumed_settings(saved, args, checkpoint)
            done = int(resumed[1]['epoch'])
            if done >= args.epochs:
                raise UsageError(f'--resume {args.resume}: the run has trained {done} epochs of --epochs '
                                 f'{args.epochs}: nothing to continue; give --epochs above {done} to train more.')
        # 1. the model and its initial weights, checked with the options before the data is read (minutes, for a
        #    large set)
        model = model_for_options(args)
        check_freeze(args, model)
        check_optimization(args, model)
        # a resumed run reads its weights from the checkpoint: no initialisation to load
        backbone = parse_backbone_init('' if args.resume else args.backbone_init, args.model)
        if backbone:  # weights that cannot be had (another architecture; the Hub offline, nothing cached) stop here
            model = create_model(args.model, backbone, **model_kwargs(args, 1))
        # the input size, interpolation, mean and std: those of the weights' pretrained_cfg (a tag's own), or those
        # the resumed run trained with
        self.data_config = trained_with if resumed else data_config_for(model, args.input_size)
        # 2. data, read and checked before anything trains (bad data stops the run here)
        tf_train = train_transform(args.task, self.data_config, args.re_prob, args.crop_padding, args.hflip)
        tf_eval = eval_transform(args.task, self.data_config)
        check, progress = not args.no_check, not args.no_progress and env.is_main
        self.train_set, self.eval_sets = load_task_data(args.task, args.data, tf_train, tf_eval, args.skip_bad, check,
                                                        face_bins=args.bins, progress=progress,
                                                        share=check_share(env))
        if resumed:
            check_resumed_classes(resumed[1].get('classes'), self.train_set.classes, args.data, resumed[0])
        if args.task == 'face' and not self.eval_sets.face_pairs and env.is_main:
            print(f'note: no .bin verification files in {args.data}; training without evaluation', file=sys.stderr)
        # 3. the model with the training set's classes (a weights file's classifier is kept where they agree)
        self.model_kwargs = model_kwargs(args, self.train_set.num_classes)
        seed_all(args.seed)  # identical initial weights on every rank
        model = create_model(args.model, backbone, verbose=env.is_main, **self.model_kwargs)
        if args.sync_bn and env.distributed:
            if env.device.type != 'cuda':
                raise UsageError('--sync-bn needs CUDA devices (PyTorch\'s SyncBatchNorm does not run on CPU).')
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        seed_all(args.seed + env.rank)  # each rank augments differently
        self.model = model.to(env.device)
        # 4. optimisation, all from timm
        self.optimizer, self.scheduler = create_optimization(model, args)
        self.criterion = LabelSmoothingCrossEntropy(args.smoothing) if args.smoothing > 0 else nn.CrossEntropyLoss()
        amp = args.amp
        self.autocast_dtype = torch.float16 if env.device.type == 'cuda' else torch.bfloat16
        self.scaler = torch.amp.GradScaler(env.device.type, enabled=amp and env.device.type == 'cuda')
        self.sampler = DistributedSampler(self.train_set.dataset, num_replicas=env.world_size, rank=env.rank,
                                          shuffle=True, seed=args.seed)
        if len(self.sampler) < args.batch_size:
            raise UsageError(f'{len(self.sampler)} training samples per process, fewer than one batch of '
                             f'{args.batch_size}: lower --batch-size.')
        # worker seeds come from this generator, re-seeded every epoch (not from the global RNG)
        self.loader_rng = torch.Generator()
        self.loader = DataLoader(self.train_set.dataset, batch_size=args.batch_size, sampler=self.sampler,
                                 num_workers=args.workers, pin_memory=env.device.type == 'cuda', drop_last=True,
                                 generator=self.loader_rng)
        self.start_epoch = 0
        if resumed:
            self._resume(*resumed)

    def _resume(self, ckpt: Path, state: Dict[str, Any], weights: Dict[str, torch.Tensor]) -> None:
        try:
            self.model.load_state_dict(weights)
        except RuntimeError as e:  # another model's weights (or, from a state without its classes, other classes)
            raise CheckpointError(f'{ckpt / MODEL_FILE} does not fit the model these options build, though its '
                                  f'settings are this run\'s: {str(e).splitlines()[-1].strip()[:300]}. The folder '
                                  'holds another model\'s weights (or --data has another number of classes): resume '
                                  'from a checkpoint this run wrote, with its data.') from e
        try:
            self.optimizer.load_state_dict(state['optimizer'])
            self.scheduler.load_state_dict(state['scheduler'])
            self.scaler.load_state_dict(state['scaler'])
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f'{ckpt / STATE_FILE}: its optimizer, scheduler or scaler state does not fit the '
                                  f'run ({type(e).__name__}: {e}): resume from a checkpoint this run wrote.') from e
        self.start_epoch = int(state['epoch'])
        rngs = state['rng']
        set_rng_state(rngs[self.env.rank] if self.env.rank < len(rngs) else rngs[0])
        if self.env.is_main:
            print(f'resumed from {ckpt} at epoch {self.start_epoch}, writing to {self.out}', file=sys.stderr)
            point_latest(self.out, ckpt)
            log = self.out / 'metrics.jsonl'
            if log.is_file():  # forget epochs logged after the checkpoint (a run resumed from an older one)
                kept = _logged_up_to(log.read_text(), self.start_epoch)
                atomic_write_text(log, ''.join(line + '\n' for line in kept))

    def _wrap(self, epoch: int) -> nn.Module:
        """The model to run this epoch (DDP-wrapped anew when the set of trainable parameters changes)."""
        frozen = epoch < self.args.freeze_epochs
        set_trainable(self.model, self.args.trainable_early if frozen else None)  # (names checked in _build)
        if not self.env.distributed:
            return self.model
        if getattr(self, '_ddp_frozen', None) is not frozen:
            ids = [self.env.device.index] if self.env.device.type == 'cuda' else None
            self._ddp = None  # release the previous wrapper (and its gradient hooks) first
            self._ddp = DistributedDataParallel(self.model, device_ids=ids)
            self._ddp_frozen = frozen
        return self._ddp

    def train_epoch(self, epoch: int) -> Dict[str, float]:
        args, env = self.args, self.env
        self.model.train()
        net = self._wrap(epoch)
        self.sampler.set_epoch(epoch)
        self.loader_rng.manual_seed(args.seed * 100003 + epoch * 1009 + env.rank)
        totals = torch.zeros(5, dtype=torch.float64)  # loss, ce, div (sums over samples), correct, count
        bar = tqdm(self.loader, desc=f'epoch {epoch + 1}/{args.epochs}', disable=args.no_progress or not env.is_main,
                   leave=False)
        for images, labels in bar:
            images, labels = images.to(env.device, non_blocking=True), labels.to(env.device, non_blocking=True)
            with torch.autocast(env.device.type, dtype=self.autocast_dtype, enabled=args.amp):
                logits = net(images)
                ce = self.criterion(logits, labels)
                div = diversity_loss(self.model)  # read (and clear) after every training forward
                loss = ce + args.div_weight * div
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if args.clip_grad is not None:
                self.scaler.unscale_(self.optimizer)
                dispatch_clip_grad([p for p in self.model.parameters() if p.requires_grad], args.clip_grad,
                                   mode=args.clip_mode)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            n = len(labels)
            totals += torch.tensor([loss.item() * n, ce.item() * n, float(div.detach()) * n,
                                    (logits.argmax(1) == labels).sum().item(), n], dtype=torch.float64)
            bar.set_postfix(loss=f'{loss.item():.4f}')
        totals = all_reduce_sum(totals.to(env.device), env).cpu()
        count = max(totals[4].item(), 1)
        broadcast_buffers(self.model, env)
        self._check_replicas()
        return {'loss': totals[0].item() / count, 'ce': totals[1].item() / count, 'div': totals[2].item() / count,
                'train_top1': 100 * totals[3].item() / count, 'samples': int(totals[4].item())}

    def _check_replicas(self) -> None:
        """Under DDP, every rank must hold the same weights and buffers (one float64 checksum per rank)."""
        if not self.env.distributed:
            return
        tensors = [*self.model.parameters(), *self.model.buffers()]
        checksum = sum(t.detach().double().abs().sum().item() for t in tensors)
        sums = all_gather_objects(checksum, self.env)
        if len(set(sums)) != 1:
            raise RuntimeError(f'DDP replicas diverged (weight and buffer checksums per rank: {sums}).')

    def state(self, epoch: int) -> Dict[str, Any]:
        return {'epoch': epoch, 'optimizer': self.optimizer.state_dict(), 'scheduler': self.scheduler.state_dict(),
                'scaler': self.scaler.state_dict(), 'settings': run_settings(self.args),
                'classes': list(self.train_set.classes),
                'rng': all_gather_objects(rng_state(), self.env)}

    def run(self) -> List[Dict[str, Any]]:
        args, env = self.args, self.env
        if env.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.out / 'args.json', json.dumps(vars(args), indent=2, default=str))
            skipped = self.train_set.skipped + self.eval_sets.skipped
            print(f'{args.task}: {len(self.train_set.dataset)} training samples, {self.train_set.num_classes} '
                  f'classes, {skipped} bad entries skipped; model {args.model}, {env.world_size} process(es)',
                  file=sys.stderr)
        history = []
        for epoch in range(self.start_epoch, args.epochs):
            t0 = time.time()
            lr = self.optimizer.param_groups[0]['lr']
            record = {'epoch': epoch + 1, 'lr': lr, **self.train_epoch(epoch)}
            skipped = self.train_set.skipped + self.eval_sets.skipped
            if skipped:
                record['skipped_bad'] = skipped
            self.scheduler.step(epoch + 1)
            state = self.state(epoch + 1)  # every rank joins the RNG gather
            if env.is_main:  # saved before evaluating: a failing evaluation does not cost the epoch
                save_checkpoint(self.out, epoch + 1, self.model, self.model_kwargs, self.data_config, state,
                                keep=args.keep)
            last = epoch + 1 == args.epochs
            try:
                if (args.eval_interval and (epoch + 1) % args.eval_interval == 0 or last) and self._has_eval():
                    record.update(evaluate(self.model, self.eval_sets, env, args.eval_batch_size, args.workers,
                                           not args.no_progress))
            except BaseException as e:  # the epoch's line is logged anyway: --resume continues after it
                record['evaluation_failed'] = f'{type(e).__name__}: {e}'
                raise
            finally:
                record['time_s'] = time.time() - t0
                self._log(record)
            history.append(record)
        if env.is_main and history:
            print(metrics_table(history[-1]))
        return history

    def _log(self, record: Dict[str, Any]) -> None:
        """Append an epoch's record to ``metrics.jsonl`` (rank 0), and show it unless ``--no-progress``."""
        if self.env.is_main:
            with (self.out / 'metrics.jsonl').open('a') as f:
                f.write(json.dumps(record) + '\n')
            if not self.args.no_progress:
                print(' '.join(f'{k}={v:.4g}' if isinstance(v, float) else f'{k}={v}' for k, v in record.items()),
                      file=sys.stderr)

    def _has_eval(self) -> bool:
        s = self.eval_sets
        return bool(s.market or s.face_pairs or s.fer)


TASK_LINES = {
    'reid': 'person re-identification: Market-1501 / DukeMTMC-reID folders',
    'face': 'face recognition: identity folders, verified on insightface .bin pair lists',
    'fer': "facial expressions: FER2013's fer2013.csv",
}


def _usage() -> str:
    tasks = '\n'.join(f'  {task:6}{TASK_LINES[task]}; model {get_recipe(task).model}' for task in TASKS)
    return (f'usage: timm-stra train {{{",".join(TASKS)}}} --data DIR [options]\n\ntasks:\n{tasks}\n\n'
            "Run 'timm-stra train TASK -h' for the task's options (their defaults: the paper's recipe).")


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in TASKS:
        asked = bool(argv) and argv[0] in ('-h', '--help')
        print(_usage(), file=sys.stdout if asked else sys.stderr)
        if argv and not asked:
            print(f'timm-stra train: no task {argv[0]!r}: choose {", ".join(TASKS)}', file=sys.stderr)
        return 0 if asked else 2
    task = argv[0]
    args = build_parser(task).parse_args(argv[1:])
    args.task = task
    env = init_distributed(args.device)
    done = False
    try:
        Trainer(args, env).run()
        done = True
    except (BadDataError, CheckpointError, FaceBinError, FileNotFoundError, UsageError) as e:
        print(f'timm-stra train {task}: {e}', file=sys.stderr)
        return 1
    finally:
        shutdown(env, barrier=done)
    return 0


if __name__ == '__main__':
    sys.exit(main())
