"""The paper's training recipes (SPEC 4, supplementary B) as defaults; every field is a CLI option.

ReID starts from torchvision's ImageNet ResNet-50 weights (the models' pretrained tag ``tv_in1k``:
timm's ``resnet50.tv_in1k``), as the paper did; face and FER train from scratch.

Learning-rate schedules are timm's, stepped once per epoch:

* ReID: ``step``, x0.2 every 20 epochs.
* face: ``multistep``, x0.1 at epochs 8 and 12 of 20 (VGGFace2: ``--decay-milestones 20 30 38 44 48
  --epochs 50``).
* FER: x0.9 every 5 epochs after epoch 80 (the rule of the code the paper follows: at 0-based
  epoch e > 80 the factor is 0.9 ** ((e - 80) // 5)), i.e. ``multistep`` with milestones
  86, 91, ..., 186 (timm's milestones count epochs from 1: milestone m applies from 0-based epoch m - 1).
"""
from dataclasses import asdict, dataclass
from typing import Dict, Tuple

TASKS = ('reid', 'face', 'fer')


@dataclass(frozen=True)
class Recipe:
    """One task's training and evaluation defaults."""
    task: str
    model: str
    epochs: int
    batch_size: int
    opt: str
    lr: float
    weight_decay: float
    momentum: float = 0.9
    sched: str = 'step'
    decay_epochs: float = 0
    decay_milestones: Tuple[int, ...] = ()
    decay_rate: float = 0.1
    smoothing: float = 0.
    div_weight: float = 1.
    freeze_epochs: int = 0           # epochs during which only `trainable_early` train
    trainable_early: Tuple[str, ...] = ('layer4', 'neck', 'fc')
    re_prob: float = 0.              # random erasing probability
    crop_padding: int = 0            # random crop after zero padding (0: no random crop)
    eval_interval: int = 10
    backbone_init: str = ''          # pretrained tag or weights file (tasks/backbone_init.py); '': none
    eval_batch_size: int = 128

    def to_dict(self) -> Dict[str, object]:
        return asdict(self)


RECIPES: Dict[str, Recipe] = {
    'reid': Recipe(
        task='reid', model='stra_resnet50_reid', epochs=100, batch_size=32, opt='adam', lr=3e-4,
        weight_decay=5e-4, sched='step', decay_epochs=20, decay_rate=0.2, smoothing=0.1, div_weight=1.0,
        freeze_epochs=8, re_prob=0.5, crop_padding=10, eval_interval=10, backbone_init='tv_in1k'),
    'face': Recipe(
        task='face', model='stra_resnet50_face', epochs=20, batch_size=512, opt='momentum', lr=0.1,
        weight_decay=5e-4, sched='multistep', decay_milestones=(8, 12), decay_rate=0.1, div_weight=0.1,
        eval_interval=1),
    'fer': Recipe(
        task='fer', model='stra_resnet50_fer', epochs=190, batch_size=128, opt='momentum', lr=0.01,
        weight_decay=5e-4, sched='multistep', decay_milestones=tuple(range(86, 190, 5)), decay_rate=0.9,
        div_weight=1.0, eval_interval=10),
}


def get_recipe(task: str) -> Recipe:
    """The paper's recipe for 'reid', 'face' or 'fer'."""
    if task not in RECIPES:
        raise ValueError(f'Unknown task {task!r}; choose one of {", ".join(TASKS)}.')
    return RECIPES[task]
