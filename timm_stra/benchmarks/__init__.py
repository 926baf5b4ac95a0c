"""Benchmarks: the paper's params/FLOPs ablation table (``timm-stra table``) and speed/memory (``timm-stra bench``)."""
