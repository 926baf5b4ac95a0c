"""What to do with entries of a data set that cannot be read: stop, or skip and count them."""
from dataclasses import dataclass, field
from typing import List


class BadDataError(ValueError):
    """A data set holds entries that cannot be read (the message names each one, and the way out)."""


@dataclass
class BadDataReport:
    """Collects unreadable entries (an image path, a CSV line) while a data set is scanned.

    Args:
        skip_bad: skip them (and count them) instead of stopping.
        source: what is being read, for messages (e.g. 'Market-1501 query').
    """
    skip_bad: bool = False
    source: str = 'data'
    problems: List[str] = field(default_factory=list)

    def add(self, where: str, why: str) -> None:
        self.problems.append(f'{where}: {why}')

    @property
    def count(self) -> int:
        return len(self.problems)

    def finish(self) -> int:
        """Raise ``BadDataError`` if anything was bad and ``skip_bad`` is off; else return the count skipped."""
        if self.problems and not self.skip_bad:
            shown = '\n  '.join(self.problems[:20])
            more = f'\n  ... and {len(self.problems) - 20} more' if len(self.problems) > 20 else ''
            raise BadDataError(
                f'{self.source}: {len(self.problems)} unreadable entr{"y" if len(self.problems) == 1 else "ies"}:\n'
                f'  {shown}{more}\nFix or remove them, or pass --skip-bad to skip them (they are counted).')
        return len(self.problems)
