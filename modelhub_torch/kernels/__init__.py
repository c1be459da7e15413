"""Numba kernels on contiguous arrays; each has a NumPy twin used as the test oracle.

Only this package imports numba, and only when a kernel is first asked for: importing
the package (or its numba-free ``ops`` module) costs nothing, so ``import
modelhub_torch`` and readers of catalogs and refs never pay numba's ~0.3 s.
Everything here is a pure function of its arrays.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from modelhub_torch.kernels.ops import OP_NONE, OP_SUB, OP_XOR

if TYPE_CHECKING:
    from modelhub_torch.kernels.fused import (
        merge4_exp_first,
        merge4_exp_first_numpy,
        merge4_sub,
        merge4_sub_numpy,
        split4_exp_first,
        split4_exp_first_numpy,
        split4_sub,
        split4_sub_numpy,
    )
    from modelhub_torch.kernels.layout import (
        from_exp_first,
        from_exp_first_numpy,
        to_exp_first,
        to_exp_first_numpy,
    )
    from modelhub_torch.kernels.planes import (
        decode_planes,
        decode_planes_numpy,
        encode_planes,
        encode_planes_numpy,
        group_permutation,
        group_permutation_numpy,
    )

# public name -> the module that defines it (imported on first access)
_HOMES = {
    **dict.fromkeys(
        ("merge4_exp_first", "merge4_exp_first_numpy", "merge4_sub", "merge4_sub_numpy",
         "split4_exp_first", "split4_exp_first_numpy", "split4_sub", "split4_sub_numpy"),
        "fused",
    ),
    **dict.fromkeys(("from_exp_first", "from_exp_first_numpy", "to_exp_first", "to_exp_first_numpy"), "layout"),
    **dict.fromkeys(
        ("decode_planes", "decode_planes_numpy", "encode_planes", "encode_planes_numpy",
         "group_permutation", "group_permutation_numpy"),
        "planes",
    ),
}

__all__ = [
    "OP_NONE",
    "OP_SUB",
    "OP_XOR",
    "decode_planes",
    "decode_planes_numpy",
    "encode_planes",
    "encode_planes_numpy",
    "from_exp_first",
    "from_exp_first_numpy",
    "group_permutation",
    "group_permutation_numpy",
    "merge4_exp_first",
    "merge4_exp_first_numpy",
    "merge4_sub",
    "merge4_sub_numpy",
    "split4_exp_first",
    "split4_exp_first_numpy",
    "split4_sub",
    "split4_sub_numpy",
    "to_exp_first",
    "to_exp_first_numpy",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'modelhub_torch.kernels' has no attribute {name!r}")
    # fused imports layout and planes itself: the three load together
    from modelhub_torch.kernels import fused, layout, planes

    value = getattr({"fused": fused, "layout": layout, "planes": planes}[home], name)
    globals()[name] = value  # later lookups skip this function
    return value
