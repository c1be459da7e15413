"""Delta op codes the plane kernels switch on (pas/registry.py maps the manifest's op
ids to them). A module without numba, so the registry can name them at import time."""

OP_NONE = 0
OP_XOR = 1
OP_SUB = 2
