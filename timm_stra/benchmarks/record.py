"""The JSON record a timing benchmark writes with ``--json``: where, how and how long it ran, and what it found."""
import argparse
import json
from typing import Dict, List

from ..atomic import atomic_write_text


def write_run_record(path: str, machine: Dict[str, object], args: argparse.Namespace, wall_s: float,
                     **tables: List[Dict[str, object]]) -> None:
    """Write ``{'machine', 'settings', 'wall_s', <tables>...}`` to ``path`` atomically (a reader never sees half
    a file). ``settings`` are the parsed arguments but ``json`` itself; ``tables`` are named lists of rows
    (``summary``/``rows``, ``raw``), in the order given."""
    settings = {k: v for k, v in vars(args).items() if k != 'json'}
    record = {'machine': machine, 'settings': settings, 'wall_s': wall_s, **tables}
    atomic_write_text(path, json.dumps(record, indent=2))
