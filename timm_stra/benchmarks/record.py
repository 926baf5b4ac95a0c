"""The JSON record a timing benchmark writes with ``--json``: where, how and how long it ran, and what it found."""
import argparse
import json
from typing import Dict, List, Optional

from ..atomic import save_results


def write_run_record(path: str, machine: Dict[str, object], args: argparse.Namespace, wall_s: float,
                     **tables: List[Dict[str, object]]) -> Optional[str]:
    """Write ``{'machine', 'settings', 'wall_s', <tables>...}`` to ``path`` atomically (a reader never sees half
    a file). ``settings`` are the parsed arguments but ``json`` itself; ``tables`` are named lists of rows
    (``summary``/``rows``, ``raw``), in the order given. Returns ``None``, or why the file could not be written
    (``save_results``)."""
    settings = {k: v for k, v in vars(args).items() if k != 'json'}
    record = {'machine': machine, 'settings': settings, 'wall_s': wall_s, **tables}
    return save_results(path, json.dumps(record, indent=2))
