"""``python -m timm_stra.convert <checkpoint> <out_dir>``: see ``timm_stra.convert.cli``."""
import sys

from .cli import main

sys.exit(main())
