"""``UsageError``: command-line options that cannot work, reported as one clear line (no traceback)."""


class UsageError(ValueError):
    """Options that cannot work together or with this data (reported without a traceback)."""
