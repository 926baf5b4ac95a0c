"""Reproduce the params/FLOPs columns of the StRA paper's ablation (Tables 1 and 2).

Same as ``timm-stra table``; ``python benchmarks/ablation.py --help`` for the options,
``--check`` to fail unless every printed value is reproduced.
"""
import sys

from timm_stra.benchmarks.ablation import main

if __name__ == '__main__':
    sys.exit(main())
