"""llm4all-recipes: keep open LLMs up to date cheaply (compress, distil, continue pretraining, fine-tune).

Importing the package is cheap: heavy libraries (torch, transformers, TRL, lighteval) load in the
stages that need them.
"""

__version__ = "0.1.0"

import logging as _logging

# torchao (the precision policy's stochastic-rounding AdamW) is imported by transformers on every model load; on
# CPU-only torch builds it warns that its CUDA kernels fail to load, and torch's pytree warns about its enums:
# noise, not problems (docs/PRECISION.md)
for _noisy in ("torchao", "torch.utils._pytree"):
    _logging.getLogger(_noisy).setLevel(_logging.ERROR)
