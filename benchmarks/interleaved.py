"""Whole-network steps of StRA, the limit, the twin and the reference, interleaved step by step in one process.

Same as ``python -m timm_stra.benchmarks.interleaved``; ``python benchmarks/interleaved.py --help`` for the options.
"""
import sys

from timm_stra.benchmarks.interleaved import main

if __name__ == '__main__':
    sys.exit(main())
