"""smmf-plan: will training this model fit, with which optimizer, on which device?"""

import logging as _logging

__version__ = "0.1.0"

# transformers imports torchao (when installed: the optimizer zoo's 8-/4-bit AdamW) while loading
# its modeling code, and torchao registers Enum pytree constants that torch >= 2.10 warns about
# on stderr at every import; the warning is not the user's to act on and would break our one-line
# errors and clean --json runs.
_logging.getLogger("torch.utils._pytree").setLevel(_logging.ERROR)
