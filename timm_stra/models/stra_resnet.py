"""ResNet-50 with StRA in the last stage, and its plain twins, on timm's ``ResNet``.

Stem and the first three stages are timm's (state-dict names ``conv1``, ``bn1``,
``layer1``..``layer3``); the last stage is rebuilt with the variant's stride and
block (``StRABottleneck``, or timm's ``Bottleneck`` for the twins); the head is
timm's classifier, optionally behind a task neck (``neck``: person ReID or face).
"""
import numbers
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn
from timm.layers import create_classifier, get_act_layer, get_norm_layer
from timm.layers.helpers import get_device_dtype
from timm.models.resnet import Bottleneck, ResNet

from ..layers.checks import check_choice
from ..layers.stra_attn import set_triton
from .blocks import StRABottleneck, make_last_stage
from .heads import FaceNeck, ReIDNeck, face_features

# fx leaves for plain torch.fx too, not only timm's tracer (register_notrace_function): layers/tracing.py
torch.fx.wrap('face_features')

STEMS = {'default': 4, 'small': 1}  # stem -> its reduction (7x7/2 conv and max-pool; 3x3/1 conv)
HEADS = ('classifier', 'reid', 'face')
STRA_DEFAULTS = dict(
    local_op='local', mode='full', groups=8, kernel_size=3, reduction=4, reference=False, recompute=True)


def _is_count(value) -> bool:
    """An integer (Python's or NumPy's), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def image_size(img_size: Union[int, Sequence[int]]) -> Tuple[int, int]:
    """``img_size`` as (height, width): an int or two positive ints (a list from a ``config.json`` too)."""
    try:
        size = (img_size, img_size) if _is_count(img_size) else tuple(img_size)
    except TypeError:  # (not a number, nor a sequence of them)
        size = ()
    if len(size) != 2 or not all(_is_count(s) and s > 0 for s in size):
        raise ValueError(f'img_size={img_size!r}: give the input size as an int or (height, width), positive '
                         'ints, e.g. img_size=(112, 112).')
    return int(size[0]), int(size[1])


def feature_size(img_size: Tuple[int, int], reduction: int) -> Tuple[int, int]:
    """The (h, w) of the last feature map for an (H, W) input, at the network's total ``reduction``."""
    return tuple((s - 1) // reduction + 1 for s in img_size)


def stage_blocks(layers: Sequence[int]) -> Tuple[int, ...]:
    """``layers`` as a tuple of four block counts, each at least 1 (Python ints, also where NumPy's were given)."""
    try:
        blocks = tuple(layers)
    except TypeError:
        blocks = ()
    if len(blocks) != 4 or not all(_is_count(n) and n >= 1 for n in blocks):
        raise ValueError(f'layers={layers!r}: give the blocks of the four stages, each at least 1, e.g. '
                         'layers=(3, 4, 6, 3) (ResNet-50).')
    return tuple(int(n) for n in blocks)


def check_output_stride(output_stride: Optional[int], stem: str, last_stride: int) -> None:
    """Raise ``ValueError`` unless ``output_stride`` is None or the one the stem and ``last_stride`` give: these
    ResNets do not dilate (timm's ``output_stride=16`` / ``8`` dilate its last stages)."""
    def stride(last: int) -> int:
        return STEMS[stem] * 4 * last
    if output_stride is not None and output_stride != stride(last_stride):
        raise ValueError(
            f'output_stride={output_stride}: these ResNets do not dilate; their output stride is set by the stem '
            f'and the last stage stride: {stride(last_stride)} with last_stride={last_stride} (this model), '
            f'{stride(3 - last_stride)} with last_stride={3 - last_stride}. Give last_stride, or leave output_stride '
            'out.')


class StRAResNet(ResNet):
    """ResNet whose last stage is built from StRA bottlenecks (or plain ones, for the twins).

    Args:
        layers: blocks per stage.
        stra: StRA blocks in the last stage; False builds the plain ResNet twin.
        local_op, mode, groups, kernel_size, reduction, reference, recompute: StRA knobs (see
            ``StRAttention``); only for ``stra=True``. Defaults: 'local', 'full', 8, 3, 4, False, True.
        last_stride: stride of the last stage (1 keeps a 16x8 map at 256x128 for ReID).
        fuse_last: keep the last 1x1 conv of each StRA block (False for the FER variant).
        stem: 'default' (7x7/2 conv + max-pool) or 'small' (3x3/1 conv, no max-pool).
        head: 'classifier' (pool + FC), 'reid' (pool + embedding + FC) or
            'face' (BN-Dropout-FC-BN embedding over the flattened map + FC).
        embed_dim: embedding width of the 'reid' and 'face' heads.
        img_size: input size the 'face' head is built for (its FC sees the whole map).
        num_classes: classifier outputs; 0 returns the embedding (or pooled features).
        global_pool: 'avg' etc. for 'classifier' and 'reid'; 'flatten' for 'face';
            '' returns the un-pooled feature map (with ``num_classes=0``).
        drop_rate: dropout before the classifier ('face': the neck's dropout).
        output_stride: None, or the output stride the stem and ``last_stride`` give (32, 16 with
            ``last_stride=1``; 8 and 4 with the small stem): the stages do not dilate.
    """

    img_size: Optional[Tuple[int, int]]  # (for TorchScript: None unless the head is 'face')

    def __init__(
            self,
            layers: Tuple[int, ...] = (3, 4, 6, 3),
            stra: bool = True,
            local_op: Optional[str] = None,
            mode: Optional[str] = None,
            groups: Optional[int] = None,
            kernel_size: Optional[int] = None,
            reduction: Optional[int] = None,
            reference: Optional[bool] = None,
            recompute: Optional[bool] = None,
            last_stride: int = 2,
            fuse_last: bool = True,
            stem: str = 'default',
            head: str = 'classifier',
            embed_dim: int = 512,
            img_size: Optional[Union[int, Tuple[int, int]]] = None,
            num_classes: int = 1000,
            in_chans: int = 3,
            global_pool: Optional[str] = None,
            drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            drop_block_rate: float = 0.,
            output_stride: Optional[int] = None,
            act_layer=nn.ReLU,
            norm_layer=nn.BatchNorm2d,
            zero_init_last: bool = True,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        layers = stage_blocks(layers)
        check_choice(stem, STEMS, 'stem')
        check_choice(head, HEADS, 'head')
        if last_stride not in (1, 2):
            raise ValueError(f'last_stride must be 1 or 2, got {last_stride}.')
        check_output_stride(output_stride, stem, last_stride)
        knobs = dict(local_op=local_op, mode=mode, groups=groups, kernel_size=kernel_size, reduction=reduction,
                     reference=reference, recompute=recompute)
        given = {k: v for k, v in knobs.items() if v is not None}
        if not stra and given:
            raise TypeError(f'{sorted(given)} only apply to StRA models; this is a plain ResNet twin.')
        if not stra and not fuse_last:
            raise ValueError('fuse_last=False removes the last 1x1 conv of StRA blocks; the twin keeps them.')
        if head == 'face' and img_size is None:
            raise ValueError("The 'face' head flattens the feature map: give img_size, e.g. img_size=(112, 112).")
        for name, rate in (('drop_rate', drop_rate), ('drop_path_rate', drop_path_rate),
                           ('drop_block_rate', drop_block_rate)):
            if not 0 <= rate < 1:  # (timm's own layers refuse one at the first forward, some without its name)
                raise ValueError(f'{name} is a probability below 1, got {rate}.')
        if embed_dim < 1:
            raise ValueError(f'embed_dim must be at least 1, got {embed_dim}.')
        if head != 'face' and img_size is not None:
            raise TypeError(f"img_size sizes the 'face' head only; a {head!r} head pools and takes any input size. "
                            '(A saved config.json may record it, written before this was refused: delete img_size '
                            'from its model_args.)')

        # Build stem and stages 1-3 with timm. The last stage is rebuilt below with its own stride and block,
        # so timm is asked for an empty one (only its downsample is made and dropped). timm decays the
        # drop-path rate over the blocks it builds: scale it so stages 1-3 get the rates of the full network.
        num_blocks = sum(layers)
        first_blocks = num_blocks - layers[-1]
        super().__init__(
            block=Bottleneck,
            layers=(*layers[:-1], 0),
            num_classes=num_classes,
            in_chans=in_chans,
            drop_rate=drop_rate,
            drop_path_rate=drop_path_rate * (first_blocks - 1) / max(num_blocks - 1, 1),
            drop_block_rate=drop_block_rate,
            act_layer=act_layer,
            norm_layer=norm_layer,
            zero_init_last=zero_init_last,
            **dd,
        )
        act_layer = get_act_layer(act_layer)
        norm_layer = get_norm_layer(norm_layer)

        stem_reduction = STEMS[stem]
        if stem == 'small':
            self.conv1 = nn.Conv2d(in_chans, 64, kernel_size=3, stride=1, padding=1, bias=False, **dd)
            nn.init.kaiming_normal_(self.conv1.weight, mode='fan_out', nonlinearity='relu')
            self.maxpool = nn.Identity()
            self.feature_info[0]['reduction'] = stem_reduction

        planes = 512
        if stra:
            self.stra_args = {**STRA_DEFAULTS, **given}
            block_fn = StRABottleneck
            block_kwargs = dict(fuse=fuse_last, act_layer=act_layer, **self.stra_args)
            out_chs = StRABottleneck.out_channels(planes, fuse_last)
        else:
            self.stra_args = {}
            block_fn = Bottleneck
            block_kwargs = dict(act_layer=act_layer)
            out_chs = planes * Bottleneck.expansion
        rates = [drop_path_rate * i / max(num_blocks - 1, 1) for i in range(first_blocks, num_blocks)]
        self.layer4, self.num_features = make_last_stage(
            block_fn, 1024, planes, layers[-1], last_stride, out_chs, rates, drop_block_rate,
            norm_layer=norm_layer, **block_kwargs, **dd)
        reductions = [stem_reduction * r for r in (1, 2, 4, 4 * last_stride)]
        for info, reduction in zip(self.feature_info[1:], reductions):
            info['reduction'] = reduction
        self.feature_info[-1]['num_chs'] = self.num_features

        self.head_type = head
        self.embed_dim = embed_dim
        self.img_size = image_size(img_size) if img_size is not None else None
        if head == 'reid':
            self.neck = ReIDNeck(self.num_features, embed_dim, **dd)
        elif head == 'face':
            self.neck = FaceNeck(self.num_features, feature_size(self.img_size, reductions[-1]), self.img_size,
                                 embed_dim, drop_rate, **dd)
            self.drop_rate = 0.  # the neck holds the face head's dropout
        else:
            self.neck = nn.Identity()
        self.use_neck = head != 'classifier'
        self.head_pool = 'flatten' if head == 'face' else 'avg'  # until reset_classifier sets the one asked for
        self.reset_classifier(num_classes, global_pool)
        self._init_last_stage(zero_init_last)

    @torch.jit.ignore
    def _init_last_stage(self, zero_init_last: bool) -> None:
        """timm's ResNet initialisation, for the stage built after ``ResNet.__init__`` ran it."""
        for m in self.layer4.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
        if zero_init_last:
            for block in self.layer4:
                block.zero_init_last()

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """Replace the classifier; ``num_classes=0`` returns the embedding (or pooled features).

        ``global_pool=None`` keeps the current pooling, as timm's ResNet does. ``global_pool=''`` drops
        pooling, and with it the embedding neck, so the model returns the feature map. The embedding
        neck itself is kept (never re-initialised), unless ``prune_intermediate_layers`` removed it.

        Raises:
            ValueError: a pooling the head cannot take (the model is left as it was).
        """
        if global_pool is None:
            global_pool = self.head_pool
        if self.head_type == 'face':
            check_choice(global_pool, ('flatten', ''), "face model's global_pool")
            if global_pool and num_classes and isinstance(self.neck, nn.Identity):
                raise ValueError('This face model\'s head was pruned (prune_intermediate_layers), and the flattening '
                                 'neck with it: a classifier would see the un-pooled map. Use num_classes=0 (the '
                                 'map), or build the model anew for a classifier.')
            pool_type = ''
        else:
            pool_type = global_pool
        # a pruned head has no neck left (an Identity, as the classifier variant's)
        use_neck = global_pool != '' and not isinstance(self.neck, nn.Identity)
        in_features = self.embed_dim if use_neck else self.num_features
        pool, fc = create_classifier(in_features, num_classes, pool_type=pool_type, **get_device_dtype(self))
        if self.head_type == 'reid' and use_neck and pool.feat_mult() != 1:
            raise ValueError(f"The ReID embedding takes {self.num_features} pooled features; "
                             f"global_pool={global_pool!r} gives {pool.feat_mult()}x as many.")
        if self.head_type == 'face' and global_pool:
            # The face neck flattens; the pool passes through. Report 'flatten' so that timm's
            # save_for_hf records global_pool='flatten' (not '', which would drop the neck on reload).
            pool.pool_type = global_pool
        self.head_pool, self.use_neck, self.num_classes = global_pool, use_neck, num_classes
        self.global_pool, self.fc = pool, fc
        self.head_hidden_size = in_features if use_neck else self.num_features * pool.feat_mult()
        self.global_pool.train(self.training)
        self.fc.train(self.training)

    @torch.jit.ignore
    def set_triton(self, enable: bool = True) -> None:
        """Run the StRA operators' inference on CUDA as Triton kernels where they apply (``timm_stra.set_triton``;
        like ``set_grad_checkpointing``, a switch that leaves the weights alone)."""
        set_triton(self, enable)

    @torch.jit.ignore
    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """timm's pruning; a pruned head takes the embedding neck with it."""
        take_indices = super().prune_intermediate_layers(indices, prune_norm, prune_head)
        if not self.use_neck:
            self.neck = nn.Identity()
        return take_indices

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) -> (B, num_classes); a face model with its neck takes only its ``img_size``."""
        features = self.forward_features(x)
        img_size = self.img_size  # (a local, which TorchScript refines from Optional)
        if self.use_neck and img_size is not None:
            features = face_features(x, features, img_size)
        return self.forward_head(features)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(B, num_features, h, w) -> (B, num_classes), or the embedding / pooled features with ``pre_logits``."""
        x = self.global_pool(x)
        if self.use_neck:
            x = self.neck(x)
        if self.drop_rate:
            x = F.dropout(x, p=float(self.drop_rate), training=self.training)
        return x if pre_logits else self.fc(x)
