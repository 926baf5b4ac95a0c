"""Run each measurement in a fresh process, cheaply.

A ``forkserver`` process imports torch, timm and timm_stra once (it runs no
tensor op, so no thread pool is forked); every measurement is then a new process
forked from it: fresh memory accounting and allocator state, without paying the
few seconds of ``import timm`` each time. Where ``forkserver`` is missing
(Windows) the processes are spawned, slower but equally fresh.
"""
import multiprocessing as mp
from typing import Dict

from .worker import Measurement, run

PRELOAD = ['timm_stra', 'timm_stra.benchmarks.worker', 'timm_stra.benchmarks.cases']


def _child(measurement: Measurement, conn) -> None:
    try:
        conn.send(('ok', run(measurement)))
    except BaseException as e:  # report any failure (including MemoryError) to the parent
        conn.send(('error', f'{type(e).__name__}: {e}'))
    finally:
        conn.close()


def _context():
    if 'forkserver' in mp.get_all_start_methods():
        ctx = mp.get_context('forkserver')
        ctx.set_forkserver_preload(PRELOAD)
        return ctx
    return mp.get_context('spawn')


def run_isolated(measurement: Measurement, timeout: float = 1800.) -> Dict[str, object]:
    """``worker.run(measurement)`` in a fresh process; raises ``RuntimeError`` if it fails or times out."""
    ctx = _context()
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(measurement, child), daemon=True)
    proc.start()
    child.close()
    try:
        if not parent.poll(timeout):
            raise RuntimeError(f'{measurement} timed out after {timeout:.0f} s.')
        status, payload = parent.recv()
    except EOFError:
        raise RuntimeError(f'{measurement}: the worker died (exit code {proc.exitcode}; out of memory?).') from None
    finally:
        if proc.is_alive():
            proc.join(5)
        if proc.is_alive():
            proc.kill()
        parent.close()
    if status != 'ok':
        raise RuntimeError(f'{measurement} failed: {payload}')
    return payload
