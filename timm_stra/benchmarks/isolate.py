"""Run each measurement in a fresh process, cheaply.

A ``forkserver`` process imports torch, timm and timm_stra once (it runs no
tensor op, so no thread pool is forked); every measurement is then a new process
forked from it: fresh memory accounting and allocator state, without paying the
few seconds of ``import timm`` each time. Where ``forkserver`` is missing
(Windows) the processes are spawned, slower but equally fresh. A worker leaves as soon as the
process that started it is gone, however it went (killed, or ended by a timeout of its own).
"""
import multiprocessing as mp
import os
import threading
from typing import Dict

from .worker import Measurement, run

PRELOAD = ['timm_stra', 'timm_stra.benchmarks.worker', 'timm_stra.benchmarks.cases']


def _exit_when_closed(lifeline) -> None:
    """Block until the parent's end of ``lifeline`` closes (it exited, or was killed without cleaning up: a
    forkserver's child is not the parent's child, so nothing else would stop it), then leave at once."""
    try:
        lifeline.recv()
    except (EOFError, OSError):
        pass
    os._exit(1)


def _child(measurement: Measurement, conn, lifeline) -> None:
    threading.Thread(target=_exit_when_closed, args=(lifeline,), daemon=True).start()
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
    watched, lifeline = ctx.Pipe(duplex=False)  # the worker watches this one: it closes when this process ends
    proc = ctx.Process(target=_child, args=(measurement, child, watched), daemon=True)
    proc.start()
    child.close()
    watched.close()
    try:
        if not parent.poll(timeout):
            proc.kill()
            raise RuntimeError(f'{measurement} timed out after {timeout:g} s.')
        status, payload = parent.recv()
    except EOFError:
        proc.join(5)
        raise RuntimeError(f'{measurement}: the worker died (exit code {proc.exitcode}; out of memory?).') from None
    finally:
        if proc.is_alive():
            proc.join(5)
        if proc.is_alive():
            proc.kill()
        parent.close()
        lifeline.close()
    if status != 'ok':
        raise RuntimeError(f'{measurement} failed: {payload}')
    return payload
