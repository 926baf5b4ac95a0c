"""The Markdown tables every command prints its results as."""
from typing import Dict, List


def markdown_table(rows: List[Dict[str, object]], decimals: int = 3) -> str:
    """Rows of dicts (same keys, the columns in the first row's order) -> a Markdown table; floats with
    ``decimals`` decimals, anything else as ``str`` gives it ('' for no rows)."""
    if not rows:
        return ''
    cols = list(rows[0])

    def fmt(v):
        return f'{v:.{decimals}f}' if isinstance(v, float) else str(v)

    lines = ['| ' + ' | '.join(cols) + ' |', '|' + '|'.join(' --- ' for _ in cols) + '|']
    lines += ['| ' + ' | '.join(fmt(r[c]) for c in cols) + ' |' for r in rows]
    return '\n'.join(lines)
