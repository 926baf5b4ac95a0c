"""What the speed benchmark compares: the cases (which model) and the tasks (which family, which input).

Cases, each built for the task's input size:

* ``twin``: the plain ResNet-50 twin (the paper's baseline, 3x3 convs in the last stage);
* ``stra``: StRA (local attention + mode attention);
* ``limit``: the twin with every last-stage 3x3 conv replaced by an identity (a strided
  one where the block downsamples): what StRA would cost if its attention were free;
* ``reference``: StRA built from the step-by-step reference operators (``reference=True``): the
  unfold-based local attention and the mode attention in the paper's order, as the authors' release;
* ``sasa_mode``: SASA + Mode, the strongest ablation baseline of Table 2;
* ``stra_triton``: StRA with ``use_triton`` (``set_triton``): its operators' inference on CUDA as
  Triton kernels; elsewhere, and in training, the same as ``stra``;
* ``stra_keep``: StRA with ``recompute=False``: its operators keep for backward what ``stra``'s
  recompute there (more memory, a little less time). Not among the benchmarks' default cases.
"""
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

import timm
import torch
from torch import nn

import timm_stra  # noqa: F401  (registers the models)
from ..layers.checks import check_choice
from ..layers.stra_attn import set_triton


@dataclass(frozen=True)
class Task:
    """A model family: the twin and StRA model names, the input size, whether the input size is fixed, and
    whether StRA's last-stage blocks keep the twin's last 1x1 convolution (FER's omit it; where they keep it,
    StRA's network is the limit's plus its operators)."""
    twin: str
    stra: str
    input_size: Tuple[int, int, int]
    fixed_size: bool = False
    keeps_last_conv: bool = True


TASKS: Dict[str, Task] = {
    'reid': Task('resnet50_reid', 'stra_resnet50_reid', (3, 256, 128)),
    'face': Task('resnet50_face', 'stra_resnet50_face', (3, 112, 112), fixed_size=True),
    'fer': Task('resnet50_fer', 'stra_resnet50_fer', (1, 44, 44), keeps_last_conv=False),
    'imagenet': Task('resnet50', 'stra_resnet50', (3, 224, 224)),
}


@dataclass(frozen=True)
class Case:
    """One model of the comparison: the twin or the StRA model of a task, with knobs, optionally limited."""
    name: str
    label: str
    stra: bool
    kwargs: Dict[str, Any] = field(default_factory=dict)
    limit: bool = False
    triton: bool = False
    by_default: bool = True  # among the cases a benchmark compares when not told which


CASES: Dict[str, Case] = {c.name: c for c in (
    Case('twin', 'ResNet-50 twin', stra=False),
    Case('stra', 'StRA (local + mode)', stra=True),
    Case('limit', 'limit (twin, last-stage 3x3 = identity)', stra=False, limit=True),
    Case('reference', 'StRA, unfold reference', stra=True, kwargs=dict(reference=True)),
    Case('sasa_mode', 'SASA + Mode', stra=True, kwargs=dict(local_op='sasa', mode='full')),
    Case('stra_triton', 'StRA, Triton inference', stra=True, triton=True),
    Case('stra_keep', 'StRA, recompute=False', stra=True, kwargs=dict(recompute=False), by_default=False),
)}


class StridedIdentity(nn.Module):
    """Identity that keeps every ``stride``-th position: the free stand-in for a strided 3x3 conv (padding 1)."""

    def __init__(self, stride: int = 2):
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[..., ::self.stride, ::self.stride]


def make_limit(model: nn.Module) -> nn.Module:
    """Replace the 3x3 conv (``conv2``) of every last-stage block of a ResNet by an identity, in place."""
    for block in model.layer4:
        stride = block.conv2.stride[0] if isinstance(block.conv2, nn.Conv2d) else 1
        block.conv2 = StridedIdentity(stride) if stride > 1 else nn.Identity()
    return model


def build_case(
        case: str,
        task: str,
        img_size: Optional[Tuple[int, int]] = None,
        device=None,
) -> nn.Module:
    """The model of ``case`` for ``task`` (default head and classifier), on ``device``.

    ``img_size`` is passed only to the face models, whose flattened head fixes the input size.
    """
    check_choice(case, tuple(CASES), 'case')
    check_choice(task, tuple(TASKS), 'task')
    spec, family = CASES[case], TASKS[task]
    kwargs = dict(spec.kwargs, device=device)
    if family.fixed_size and img_size is not None:
        kwargs['img_size'] = tuple(img_size)
    model = timm.create_model(family.stra if spec.stra else family.twin, **kwargs)
    if spec.triton:
        set_triton(model)
    return make_limit(model) if spec.limit else model
