"""The stages `llm4all <stage>` runs, by name: one module each, with a linear `run(recipe, callbacks=None)`
(`sft` → stages/sft.py, `tiny-model` → stages/tiny_model.py). Their recipe types are `configs.RECIPES`; the
`pipeline` command (pipeline.py), which runs a list of stage recipes, sits one floor above.

A stage module imports the floors below it (training, evaluation, compression, data, ...), never another stage.
"""

from . import (
    build_dataset,
    cache_teacher,
    compress,
    convert,
    cpt,
    eval,
    export_dense,
    feature_distill,
    generate,
    kd,
    merge,
    prune,
    publish,
    select,
    sft,
    speech_sft,
    tiny_model,
    transcribe,
)

STAGES = {
    "build-dataset": build_dataset,
    "cache-teacher": cache_teacher,
    "compress": compress,
    "convert": convert,
    "cpt": cpt,
    "eval": eval,
    "export-dense": export_dense,
    "feature-distill": feature_distill,
    "generate": generate,
    "kd": kd,
    "merge": merge,
    "prune": prune,
    "publish": publish,
    "select": select,
    "sft": sft,
    "speech-sft": speech_sft,
    "tiny-model": tiny_model,
    "transcribe": transcribe,
}
