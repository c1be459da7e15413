"""Which torch dtypes the codec stores, and how their bits are viewed.

Every tensor is handled as an array of unsigned integers of its element width, so the
codec never does float arithmetic and every bit pattern survives.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import numpy as np

from modelhub_torch.errors import UnsupportedDtypeError

if TYPE_CHECKING:
    import torch

_UINT_BY_WIDTH = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}

# name stored in manifests -> bytes per element. Complex tensors are stored as their
# float pairs. A table of its own so reading a manifest needs no torch import.
ITEMSIZE: dict[str, int] = {
    "float64": 8, "float32": 4, "float16": 2, "bfloat16": 2,
    "int64": 8, "int32": 4, "int16": 2, "int8": 1, "uint8": 1, "bool": 1,
    "complex64": 8, "complex128": 16,
    "uint16": 2, "uint32": 4, "uint64": 8, "float8_e4m3fn": 1, "float8_e5m2": 1,
}
FLOAT_DTYPES = frozenset(n for n in ITEMSIZE if n.startswith(("float", "bfloat", "complex")))


@functools.cache
def _torch_dtypes() -> dict[str, torch.dtype]:
    """Stored name -> torch dtype, for the names this torch has."""
    import torch

    return {name: getattr(torch, name) for name in ITEMSIZE if isinstance(getattr(torch, name, None), torch.dtype)}


@functools.cache
def _names_by_dtype() -> dict[torch.dtype, str]:
    return {v: k for k, v in _torch_dtypes().items()}


def __getattr__(name: str) -> Any:
    if name == "DTYPES":  # the name -> torch dtype table, built on first use
        return _torch_dtypes()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def dtype_name(dtype: torch.dtype) -> str:
    """Stable manifest name of a torch dtype; refuses what we cannot store exactly."""
    try:
        return _names_by_dtype()[dtype]
    except KeyError:
        raise UnsupportedDtypeError(
            f"tensor dtype {dtype} is not supported; supported: {', '.join(sorted(_torch_dtypes()))}. "
            "Convert the tensor (e.g. .to(torch.float32)) before committing."
        ) from None


def torch_dtype(name: str) -> torch.dtype:
    """Inverse of :func:`dtype_name`."""
    try:
        return _torch_dtypes()[name]
    except KeyError:
        raise UnsupportedDtypeError(
            f"stored dtype {name!r} is not known to this version of modelhub_torch; upgrade it"
        ) from None


def element_width(name: str) -> int:
    """Bytes per coded element: complex dtypes are coded as their two float halves."""
    try:
        width = ITEMSIZE[name]
    except KeyError:
        raise UnsupportedDtypeError(
            f"stored dtype {name!r} is not known to this version of modelhub_torch; upgrade it"
        ) from None
    return width // 2 if name.startswith("complex") else width


def tensor_bits(tensor: torch.Tensor) -> np.ndarray:
    """A flat, contiguous unsigned-integer view of ``tensor``'s bytes (CPU, maybe a copy)."""
    import torch

    name = dtype_name(tensor.dtype)
    t = tensor.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    # conjugate/negative views carry a lazy bit that .view(uint8) refuses: materialise it
    t = t.resolve_conj().resolve_neg().contiguous().reshape(-1)
    raw = t.view(torch.uint8).numpy() if t.numel() else np.empty(0, np.uint8)
    return raw.view(_UINT_BY_WIDTH[element_width(name)])


def bits_to_tensor(bits: np.ndarray, name: str, shape: list[int] | tuple[int, ...]) -> torch.Tensor:
    """Wrap decoded bits as a tensor of the stored dtype and shape (no copy)."""
    import torch

    dtype = torch_dtype(name)
    raw = torch.from_numpy(np.ascontiguousarray(bits).view(np.uint8))
    if raw.numel() == 0:
        return torch.empty(tuple(shape), dtype=dtype)
    return raw.view(dtype).reshape(tuple(shape))


def uint_dtype(name: str) -> np.dtype:
    """NumPy unsigned dtype used to hold one coded element of ``name``."""
    return np.dtype(_UINT_BY_WIDTH[element_width(name)])
