"""Task toolkit: datasets, metrics, training and evaluation for the paper's three tasks.

* person ReID on Market-1501 / DukeMTMC-reID folders (``timm-stra train reid``),
* face recognition on identity folders, verified on insightface ``.bin`` pair files
  (``timm-stra train face``),
* facial expressions on ``fer2013.csv`` (``timm-stra train fer``).

``timm-stra eval reid|face|fer`` scores a checkpoint with the paper's metrics.

Modules: ``data`` (readers), ``metrics``, ``recipes`` (the paper's defaults), ``transforms``,
``task_data`` (which files each task reads), ``train``, ``backbone_init`` (``--backbone-init``),
``evaluate``, ``checkpoint``, ``distributed``, ``freeze`` (the ReID warm-up), ``rng``, ``usage``
(``UsageError``).
"""
from .checkpoint import load_model, resolve_checkpoint
from .data import BadDataError, FaceBinError, FacePairs, Fer2013, Market1501, load_face_bin, read_fer2013
from .metrics import reid_cmc_map, top1_accuracy, verification_accuracy
from .recipes import RECIPES, Recipe, get_recipe
