"""Embedding necks of the task variants, between global pooling and the classifier.

* ``ReIDNeck``: the person re-identification embedding of the authors' release,
  a 1x1 conv (no bias) and BatchNorm on the pooled features, here as the
  equivalent Linear + BatchNorm1d.
* ``FaceNeck``: the ArcFace "E" output, BN2d -> Dropout -> flatten -> FC -> BN1d
  over the whole (un-pooled) feature map, so the input size is fixed.
"""
from typing import Tuple

import torch
from torch import nn
from timm.layers import register_notrace_function

# fx leaves for plain torch.fx too, not only timm's tracer (register_notrace_function): layers/tracing.py
torch.fx.wrap('check_face_feature_size')


class ReIDNeck(nn.Module):
    """Pooled features to a BN-normalised embedding.

    Shapes:
        (B, in_features) -> (B, embed_dim)
    """

    def __init__(self, in_features: int, embed_dim: int = 512, device=None, dtype=None):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.fc = nn.Linear(in_features, embed_dim, bias=False, **dd)
        self.norm = nn.BatchNorm1d(embed_dim, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.fc(x))


@register_notrace_function
def check_face_feature_size(x: torch.Tensor, feat_size: Tuple[int, int], input_size: Tuple[int, int]) -> None:
    """Raise a ``ValueError`` unless the feature map has the size the flattened head was built for."""
    if x.dim() != 4 or x.shape[-2] != feat_size[0] or x.shape[-1] != feat_size[1]:
        raise ValueError(
            'This face model flattens a {}x{} feature map, i.e. it takes {}x{} input images; got features of '
            'shape {}. Resize the input to {}x{}, or build the model for your size, e.g. '
            'timm.create_model(..., img_size=(224, 192)).'.format(
                feat_size[0], feat_size[1], input_size[0], input_size[1], x.shape, input_size[0], input_size[1]))


@register_notrace_function
def face_features(x: torch.Tensor, features: torch.Tensor, input_size: Tuple[int, int]) -> torch.Tensor:
    """``features`` of the images ``x``, passed on to a face model's flattening head if ``x`` has the size the head
    was built for (another size can give a map of the same shape, laid out differently); else a ``ValueError``.

    A pass-through rather than a check beside the forward: a traced graph keeps it on the way to the head only, so
    an fx feature extractor that stops before the head neither runs it nor refuses other sizes.
    """
    if x.dim() != 4 or x.shape[-2] != input_size[0] or x.shape[-1] != input_size[1]:
        raise ValueError(
            'This face model flattens its feature map, so it takes {}x{} images only; got input of shape {}. '
            'Resize the input to {}x{}, or build the model for your size, e.g. '
            'timm.create_model(..., img_size=(224, 192)).'.format(
                input_size[0], input_size[1], x.shape, input_size[0], input_size[1]))
    return features


class FaceNeck(nn.Module):
    """BN-Dropout-FC-BN face embedding over a fixed-size feature map.

    Args:
        in_chs: feature channels.
        feat_size: (h, w) of the feature map.
        input_size: (H, W) of the images it comes from (for error messages).
        embed_dim: embedding width.
        drop_rate: dropout before the FC.

    Shapes:
        (B, in_chs, h, w) -> (B, embed_dim)
    """

    def __init__(
            self,
            in_chs: int,
            feat_size: Tuple[int, int],
            input_size: Tuple[int, int],
            embed_dim: int = 512,
            drop_rate: float = 0.4,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.feat_size = feat_size
        self.input_size = input_size
        self.norm_in = nn.BatchNorm2d(in_chs, **dd)
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(in_chs * feat_size[0] * feat_size[1], embed_dim, **dd)
        self.norm = nn.BatchNorm1d(embed_dim, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_face_feature_size(x, self.feat_size, self.input_size)
        return self.norm(self.fc(self.drop(self.norm_in(x)).flatten(1)))
