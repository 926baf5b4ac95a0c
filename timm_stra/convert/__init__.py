"""Conversion of the authors' released weights to timm-stra's layout."""
from .official import convert_official_key, convert_official_state_dict
from .release import convert_checkpoint
