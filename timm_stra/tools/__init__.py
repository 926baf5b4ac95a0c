"""Command-line tools of timm-stra."""
