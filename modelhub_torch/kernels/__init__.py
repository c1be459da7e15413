"""Numba kernels on contiguous arrays; each has a NumPy twin used as the test oracle.

Only this package imports numba. Everything here is a pure function of its arrays.
"""

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
    OP_NONE,
    OP_SUB,
    OP_XOR,
    decode_planes,
    decode_planes_numpy,
    encode_planes,
    encode_planes_numpy,
    group_permutation,
    group_permutation_numpy,
)

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
