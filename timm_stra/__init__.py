"""timm-stra: Structure-Regularized Attention backbones for timm.

``import timm_stra`` registers the models with timm::

    import timm, timm_stra
    model = timm.create_model('stra_resnet50_reid')
"""
from .diversity import diversity_loss, diversity_per_sample
from .layers import LocalAttention, ModeAttention, SelfAttention2d, StRAttention, set_triton
from .models import StRAResNet
from .version import __version__

__all__ = [
    'LocalAttention', 'ModeAttention', 'SelfAttention2d', 'StRAResNet', 'StRAttention', '__version__',
    'diversity_loss', 'diversity_per_sample', 'set_triton',
]
