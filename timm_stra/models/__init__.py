"""StRA model family; importing this module registers the models with timm."""
from .blocks import StRABottleneck, make_last_stage
from .heads import FaceNeck, ReIDNeck
from .resnet import (
    resnet50_face, resnet50_fer, resnet50_reid, stra_resnet50, stra_resnet50_face, stra_resnet50_fer,
    stra_resnet50_reid,
)
from .stra_resnet import StRAResNet
