"""SMMF's state definition and kernel geometry, from the planner's torch-free registry entry
(:mod:`smmf_plan.optimizers.smmf`).

The one place in :mod:`smmf_plan.optim` that imports it, so that the optimizer allocates exactly
what the planner counts and the two cannot drift apart.
"""

from ..optimizers.smmf import (  # noqa: F401 (re-exported)
    BLOCK_NUMEL,
    SIGN_STORAGES,
    TRITON_ROWS,
    block_rows,
    cpu_scratch_elems,
    cpu_tasks,
    is_factorized,
    smmf_state,
    triton_scratch,
)
from ..shapes import square_matricize  # noqa: F401
