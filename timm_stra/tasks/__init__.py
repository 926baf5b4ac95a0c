"""Task toolkit: datasets, metrics, training and evaluation for the paper's three tasks.

* person ReID on Market-1501 / DukeMTMC-reID folders (``timm-stra train reid``),
* face recognition on identity folders, verified on insightface ``.bin`` pair files
  (``timm-stra train face``),
* facial expressions on ``fer2013.csv`` (``timm-stra train fer``).

``timm-stra eval reid|face|fer`` scores a checkpoint with the paper's metrics.
"""
from .recipes import RECIPES, Recipe, get_recipe
