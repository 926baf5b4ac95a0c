"""Throughput and peak memory of StRA, its ResNet-50 twin, the limit, the reference and SASA + Mode.

Same as ``timm-stra bench``; ``python benchmarks/speed.py --help`` for the options.
"""
import sys

from timm_stra.benchmarks.speed import main

if __name__ == '__main__':
    sys.exit(main())
