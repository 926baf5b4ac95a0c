"""The restricted unpickler of face pair files: Python bytes and bools, and NumPy's booleans, nothing else.

insightface reads a ``.bin`` with ``pickle.load``, which would import and call whatever a crafted
file names. ``PairListUnpickler`` resolves no global but these stand-ins, and runs no code but theirs:

* ``_codecs.encode(text, 'latin1')``: how Python 3 protocol-2 pickles store bytes;
* NumPy's booleans, which flags packed from NumPy data are. Unpickled the usual way they call NumPy;
  here each name maps to a stand-in that accepts a boolean dtype and one byte (0 or 1) per flag:

  - a scalar: ``numpy.core.multiarray.scalar(dtype('b1'), b'\\x01')`` -> ``True``;
  - an array (protocols 2-4): ``_reconstruct(ndarray, (0,), b'b')``, then its state
    ``(1, (n,), dtype('b1'), False, n bytes)`` -> a ``BoolArray`` of ``n`` bools (``plain_flags``);
  - an array (protocol 5): ``numpy.core.numeric._frombuffer(n bytes, dtype('b1'), (n,), 'C')`` -> the same.

  NumPy 2 names its modules ``numpy._core``, NumPy 1 (and Python 2 pickles) ``numpy.core``: both are taken.

Every global is handed out sealed (``SealedGlobal``): pickle's BUILD on a global would otherwise set
attributes on it (a function's defaults, say) for the rest of the process.
"""
import pickle
from types import MappingProxyType
from typing import Any, Callable, List, Mapping, Tuple


class SealedGlobal:
    """A global as the unpickler hands it out: callable, and refusing pickle's BUILD (no attribute can be set)."""
    __slots__ = ('_target',)

    def __init__(self, target: Callable):
        object.__setattr__(self, '_target', target)

    def __call__(self, *args):
        return self._target(*args)

    def __setattr__(self, name, value):
        raise AttributeError('a SealedGlobal is read-only')

    def __setstate__(self, state):
        raise pickle.UnpicklingError('the file sets attributes on a global (pickle BUILD): not allowed')


def latin1_encode(text, encoding='latin1', *args) -> bytes:
    """``_codecs.encode``, as protocol 2 stores bytes: only ``encode(str, 'latin1')``."""
    if not isinstance(text, str) or encoding not in ('latin1', 'latin-1') or args:
        raise pickle.UnpicklingError('_codecs.encode is only accepted as encode(str, "latin1")')
    return text.encode('latin1')


def _flags(data, count: int) -> List[bool]:
    """``count`` bools from ``data``, one byte each, 0 or 1."""
    if not isinstance(data, (bytes, bytearray)) or len(data) != count:
        raise pickle.UnpicklingError(f'numpy booleans: expected {count} bytes of flags, got {type(data).__name__}'
                                     f'{f" of {len(data)}" if isinstance(data, (bytes, bytearray)) else ""}')
    if any(byte > 1 for byte in data):
        raise pickle.UnpicklingError('numpy booleans: a flag byte is neither 0 nor 1')
    return [bool(byte) for byte in data]


class BoolDtype:
    """Stands in for ``numpy.dtype('b1')``, the only dtype taken (it pickles as ``dtype('b1', False, True)``)."""
    __slots__ = ()

    def __init__(self, name, align=False, copy=True):
        if name not in ('b1', b'b1'):
            raise pickle.UnpicklingError(f'numpy dtype {name!r} is not allowed in a face pair file (only booleans)')

    def __setstate__(self, state):
        """The byte order and the like, which a one-byte boolean does not have."""


def _dtype(dtype) -> BoolDtype:
    if not isinstance(dtype, BoolDtype):
        raise pickle.UnpicklingError('numpy booleans: the dtype is not a numpy dtype')
    return dtype


def _shape(shape) -> int:
    """The length of a 1-D shape ``(n,)``."""
    if not (isinstance(shape, tuple) and len(shape) == 1 and isinstance(shape[0], int) and shape[0] >= 0):
        raise pickle.UnpicklingError(f'numpy booleans: the flags must be one-dimensional, got shape {shape!r}')
    return shape[0]


def bool_scalar(dtype, data) -> bool:
    """``numpy.core.multiarray.scalar``: one ``numpy.bool_``."""
    _dtype(dtype)
    return _flags(data, 1)[0]


def _ndarray_name():
    """Stands in for ``numpy.ndarray``, which only ``_reconstruct`` may take (never called)."""
    raise pickle.UnpicklingError('numpy.ndarray is only accepted as _reconstruct\'s argument')


_NDARRAY = SealedGlobal(_ndarray_name)


class BoolArray:
    """A boolean array being unpickled: no flags until its state gives them, once (it is no list: a crafted file
    cannot append to it). ``plain_flags`` takes the flags out."""
    __slots__ = ('flags',)

    def __init__(self):
        self.flags = None

    def __setstate__(self, state):
        if self.flags is not None:
            raise pickle.UnpicklingError('numpy booleans: an array given its state twice')
        if not (isinstance(state, tuple) and len(state) == 5 and state[0] == 1):
            raise pickle.UnpicklingError('numpy booleans: an array state this reader does not know')
        _, shape, dtype, fortran_order, data = state
        _dtype(dtype)
        self.flags = _flags(data, _shape(shape))


def plain_flags(obj):
    """``obj``'s flags as a list where it is a ``BoolArray`` with its state (else ``obj`` itself, for the caller to
    check)."""
    if isinstance(obj, BoolArray) and obj.flags is not None:
        return obj.flags
    return obj


def reconstruct_array(cls, shape, typecode) -> BoolArray:
    """``numpy.core.multiarray._reconstruct``: the empty array its state then fills."""
    if cls is not _NDARRAY:
        raise pickle.UnpicklingError('numpy booleans: _reconstruct of anything but an ndarray')
    return BoolArray()


def array_from_buffer(data, dtype, shape, order='C') -> Tuple[bool, ...]:
    """``numpy.core.numeric._frombuffer`` (protocol 5): a tuple, which a crafted file cannot append to."""
    _dtype(dtype)
    return tuple(_flags(data, _shape(shape)))


_GLOBALS: Mapping[Tuple[str, str], Any] = MappingProxyType({
    ('_codecs', 'encode'): SealedGlobal(latin1_encode),
    ('numpy', 'dtype'): SealedGlobal(BoolDtype),
    ('numpy', 'ndarray'): _NDARRAY,
    **{(module, 'scalar'): SealedGlobal(bool_scalar) for module in ('numpy.core.multiarray', 'numpy._core.multiarray')},
    **{(module, '_reconstruct'): SealedGlobal(reconstruct_array)
       for module in ('numpy.core.multiarray', 'numpy._core.multiarray')},
    **{(module, '_frombuffer'): SealedGlobal(array_from_buffer)
       for module in ('numpy.core.numeric', 'numpy._core.numeric')},
})


class PairListUnpickler(pickle.Unpickler):
    """An unpickler that resolves no global but the stand-ins above (give it ``encoding='bytes'`` for Python 2
    files, as insightface does)."""

    def find_class(self, module: str, name: str):
        if (module, name) in _GLOBALS:
            return _GLOBALS[module, name]
        raise pickle.UnpicklingError(f'global {module}.{name} is not allowed in a face pair file')
