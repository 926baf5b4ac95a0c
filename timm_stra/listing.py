"""Lists of names (state-dict keys, pickled globals) as error messages show them: the first few, and how many."""
from typing import Sequence


def shown_list(items: Sequence[str], limit: int = 6) -> str:
    """``'a, b, c'``, or the first ``limit`` items and the count: ``'a, b, c ... (9 in all)'``."""
    items = list(items)
    return ', '.join(items[:limit]) + (f' ... ({len(items)} in all)' if len(items) > limit else '')
