"""The last stage's operators on their own: StRA, its step-by-step reference and the twin's 3x3 conv.

Same as ``python -m timm_stra.benchmarks.operator``; ``python benchmarks/operator.py --help`` for the options.
"""
import sys

from timm_stra.benchmarks.operator import main

if __name__ == '__main__':
    sys.exit(main())
