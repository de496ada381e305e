"""One module per stage, named after it (`sft` → stages/sft.py, `tiny-model` → stages/tiny_model.py),
each with a linear `run(recipe)`. The recipe types are registered in `configs.RECIPES`.
"""

import importlib


def runner(stage: str):
    """The `run(recipe, callbacks=None)` function of a stage."""
    return importlib.import_module(f"{__name__}.{stage.replace('-', '_')}").run
