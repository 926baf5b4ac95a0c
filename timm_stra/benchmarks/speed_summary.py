"""Medians, paired ratios and tables of ``timm-stra bench``'s runs (``speed.py`` runs them).

A run is one case's timed steps in one setting and repeat round: ``worker.run``'s dict (its
``mode``, ``batch``, ``img_size``, ``case``, ``seconds``: the median step, ``all_seconds``,
``cpu_seconds``, ``peak_mb``, ``base_mb``, ``page_faults``, ``threads_used``) with the round's
``repeat`` (``speed.run_all``). ``summarize`` gives one row per (mode, batch, size, case);
``main_table`` and ``sweep_table`` print them.
"""
import statistics
from typing import Dict, List, Optional, Sequence, Tuple

from ..markdown import markdown_table
from .cases import CASES
from .median_interval import median_interval


def paired_ratios(runs: List[Dict[str, object]], base_runs: List[Dict[str, object]]) -> List[float]:
    """(step seconds / base's step seconds in that round), for every repeat round both ran in.

    Runs of one round are minutes apart at most, so a ratio within a round is spared the machine's
    slower drifts (load from other tenants, memory warming up) that move whole rounds.
    """
    base = {r['repeat']: r['seconds'] for r in base_runs}
    return [r['seconds'] / base[r['repeat']] for r in runs if r['repeat'] in base]


def summarize(raw: List[Dict[str, object]], twin: str = 'twin') -> List[Dict[str, object]]:
    """Medians over repeats per (mode, batch, size, case), with ratios to ``twin`` in the same setting."""
    groups: Dict[tuple, List[Dict[str, object]]] = {}
    for r in raw:
        groups.setdefault((r['mode'], r['batch'], tuple(r['img_size']), r['case']), []).append(r)
    rows = {}
    for key, runs in groups.items():
        seconds = statistics.median(r['seconds'] for r in runs)
        cpu_seconds = statistics.median(r['cpu_seconds'] for r in runs)
        best = min(t for r in runs for t in r['all_seconds'])
        peak = statistics.median(r['peak_mb'] for r in runs)
        base = statistics.median(r['base_mb'] for r in runs)
        faults = [r['page_faults'] for r in runs if r.get('page_faults') is not None]
        rows[key] = {
            'mode': key[0], 'batch': key[1], 'img_size': list(key[2]), 'case': key[3],
            'repeats': len(runs), 'seconds': seconds, 'images_per_s': key[1] / seconds,
            'ms_per_image': 1000 * seconds / key[1], 'cpu_ms_per_image': 1000 * cpu_seconds / key[1],
            'best_images_per_s': key[1] / best,
            'peak_mb': peak, 'step_mb': peak - base, 'page_faults': statistics.median(faults) if faults else None,
            'all_seconds': [r['seconds'] for r in runs], 'threads': runs[0]['threads_used'],
        }
    for key, row in rows.items():
        ref = rows.get(key[:3] + (twin,))
        # the speed goals' yardsticks: time per step over the limit's (attention for free) and over StRA's
        for case, column in (('limit', 'time_vs_limit'), ('stra', 'time_vs_stra')):
            ratios = paired_ratios(groups[key], groups.get(key[:3] + (case,), []))
            row[column] = statistics.median(ratios) if ratios else None
            row[f'{column}_interval'] = median_interval(ratios)  # (None for fewer than 6 rounds)
        row['speed_vs_twin'] = row['images_per_s'] / ref['images_per_s'] if ref else None
        row['cpu_vs_twin'] = ref['cpu_ms_per_image'] / row['cpu_ms_per_image'] if ref else None
        row['best_vs_twin'] = row['best_images_per_s'] / ref['best_images_per_s'] if ref else None
        row['peak_vs_twin'] = row['peak_mb'] / ref['peak_mb'] if ref else None
        row['step_mem_vs_twin'] = row['step_mb'] / ref['step_mb'] if ref and ref['step_mb'] > 0 else None
    return list(rows.values())


def _x(v: Optional[float], interval: Optional[Tuple[float, float]] = None) -> str:
    """``1.04x``, with its 95% interval where there is one: ``1.04x [0.98-1.10]``."""
    if v is None:
        return '-'
    return f'{v:.2f}x' + (f' [{interval[0]:.2f}-{interval[1]:.2f}]' if interval else '')


def main_table(rows: List[Dict[str, object]], size: Tuple[int, int], cpu: bool = False,
               faults: bool = False, memory: bool = True) -> str:
    """Throughput and memory at the task resolution, one line per (mode, batch, case).

    Throughput: the median over repeats, and the best step of all repeats (the run least
    disturbed by other load on a shared machine). "time vs limit" / "time vs StRA": the step
    time over that of the limit / of StRA in the same setting and repeat round, median over the
    rounds (``paired_ratios``; below 1 is faster), with the median's 95% confidence interval from 6 rounds on
    (``median_interval``). ``cpu`` adds the process CPU time
    columns (meaningless for a GPU run; on a virtual machine it includes steal time), ``faults``
    a timed step's minor page faults (``page_faults``; median); without ``memory`` the memory columns are '-'.
    """
    lines = [{
        'mode': r['mode'], 'batch': r['batch'], 'case': CASES[r['case']].label,
        'images/s (median)': f"{r['images_per_s']:.2f}", 'vs twin': _x(r['speed_vs_twin']),
        'time vs limit': _x(r['time_vs_limit'], r['time_vs_limit_interval']),
        'time vs StRA': _x(r['time_vs_stra'], r['time_vs_stra_interval']),
        'images/s (best)': f"{r['best_images_per_s']:.2f}", 'best vs twin': _x(r['best_vs_twin']),
        'CPU-ms/image': f"{r['cpu_ms_per_image']:.0f}", 'CPU time vs twin': _x(r['cpu_vs_twin']),
        'peak MiB': f"{r['peak_mb']:.0f}" if memory else '-', 'peak vs twin': _x(r['peak_vs_twin'] if memory else None),
        'step MiB': f"{r['step_mb']:.0f}" if memory else '-',
        'step vs twin': _x(r['step_mem_vs_twin'] if memory else None),
        'page faults/step': '-' if r.get('page_faults') is None else f"{r['page_faults']:,.0f}",
    } for r in rows if tuple(r['img_size']) == tuple(size)]
    for line in lines:
        if not cpu:
            del line['CPU-ms/image'], line['CPU time vs twin']
        if not faults:
            del line['page faults/step']
    return markdown_table(lines)


def sweep_table(rows: List[Dict[str, object]], sizes: Sequence[Tuple[int, int]], batch: int,
                base: Tuple[int, int]) -> str:
    """Inference ms/image per case at each size: growth over the first size and ratio to the twin."""
    by = {(r['case'], tuple(r['img_size'])): r for r in rows if r['mode'] == 'infer' and r['batch'] == batch}
    cases = list(dict.fromkeys(r['case'] for r in rows))
    lines = []
    for case in cases:
        line = {'case': CASES[case].label}
        first = by.get((case, tuple(sizes[0])))
        for s in sizes:
            r = by.get((case, tuple(s)))
            pixels = s[0] * s[1] / (base[0] * base[1])
            head = f'{s[0]}x{s[1]} ({pixels:.2f}x px)'
            if r is None:
                line[head] = '-'
                continue
            growth = r['ms_per_image'] / first['ms_per_image'] if first else None
            best_growth = first['best_images_per_s'] / r['best_images_per_s'] if first else None
            line[head] = (f"median {r['ms_per_image']:.0f} ms ({_x(growth)} of 1st, {_x(r['speed_vs_twin'])} twin); "
                          f"best {1000 / r['best_images_per_s']:.0f} ms ({_x(best_growth)}, "
                          f"{_x(r['best_vs_twin'])})")
        lines.append(line)
    return markdown_table(lines)
