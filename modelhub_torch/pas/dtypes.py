"""Which torch dtypes the codec stores, and how their bits are viewed.

Every tensor is handled as an array of unsigned integers of its element width, so the
codec never does float arithmetic and every bit pattern survives.
"""

from __future__ import annotations

import numpy as np
import torch

from modelhub_torch.errors import UnsupportedDtypeError

_UINT_BY_WIDTH = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}

# name stored in manifests -> torch dtype. Complex tensors are stored as their float pairs.
DTYPES: dict[str, torch.dtype] = {
    "float64": torch.float64,
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int64": torch.int64,
    "int32": torch.int32,
    "int16": torch.int16,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "bool": torch.bool,
    "complex64": torch.complex64,
    "complex128": torch.complex128,
}
for _name in ("uint16", "uint32", "uint64", "float8_e4m3fn", "float8_e5m2"):
    if hasattr(torch, _name):
        DTYPES[_name] = getattr(torch, _name)

_NAME_BY_DTYPE = {v: k for k, v in DTYPES.items()}
FLOAT_DTYPES = frozenset(
    n for n in DTYPES if n.startswith(("float", "bfloat", "complex"))
)


def dtype_name(dtype: torch.dtype) -> str:
    """Stable manifest name of a torch dtype; refuses what we cannot store exactly."""
    try:
        return _NAME_BY_DTYPE[dtype]
    except KeyError:
        raise UnsupportedDtypeError(
            f"tensor dtype {dtype} is not supported; supported: {', '.join(sorted(DTYPES))}. "
            "Convert the tensor (e.g. .to(torch.float32)) before committing."
        ) from None


def torch_dtype(name: str) -> torch.dtype:
    """Inverse of :func:`dtype_name`."""
    try:
        return DTYPES[name]
    except KeyError:
        raise UnsupportedDtypeError(
            f"stored dtype {name!r} is not known to this version of modelhub_torch; upgrade it"
        ) from None


def element_width(name: str) -> int:
    """Bytes per coded element: complex dtypes are coded as their two float halves."""
    width = torch.empty((), dtype=torch_dtype(name)).element_size()
    return width // 2 if name.startswith("complex") else width


def tensor_bits(tensor: torch.Tensor) -> np.ndarray:
    """A flat, contiguous unsigned-integer view of ``tensor``'s bytes (CPU, maybe a copy)."""
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
    dtype = torch_dtype(name)
    raw = torch.from_numpy(np.ascontiguousarray(bits).view(np.uint8))
    if raw.numel() == 0:
        return torch.empty(tuple(shape), dtype=dtype)
    return raw.view(dtype).reshape(tuple(shape))


def uint_dtype(name: str) -> np.dtype:
    """NumPy unsigned dtype used to hold one coded element of ``name``."""
    return np.dtype(_UINT_BY_WIDTH[element_width(name)])
