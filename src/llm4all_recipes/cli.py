"""The one entry point: `llm4all <stage> --config RECIPE.yaml [--key value ...]`.

`python -m llm4all_recipes <stage> ...` is the same program, so `accelerate launch -m llm4all_recipes
<stage> ...` and `torchrun -m llm4all_recipes <stage> ...` work for every stage that trains.
Recipe and input errors print one line naming the file and the key, and exit with status 2.
"""

import difflib
import logging
import os
import sys
from collections.abc import Sequence

from .errors import RecipeError

USAGE = """usage: llm4all <command> [--config RECIPE.yaml] [--key value ...]

stages (recipes/<model>/<stage>/<variant>.yaml):
  tiny-model       the embedded default: tiny Llama + French tokenizer (no args); a tiny random Whisper; a speech-llm
  build-dataset    a dataset + card from the simsamu, meetings or text layout (recipes/datasets/)
  transcribe       Whisper: recordings (simsamu layout, audio manifests) -> the same rows + WER/CER
  speech-sft       speech-text model (Whisper encoder + projector + LM): audio + text rows, projector / LoRA
  compress         SVD-family low-rank initialisation of the linear layers (Whisper: both stacks), layer by layer
  feature-distill  Lillama: heal a low-rank model block by block against its original
  export-dense     multiply a low-rank checkpoint's factors out into a plain one
  convert          a checkpoint with pickle weights only (pytorch_model*.bin) as safetensors, read safely, once
  prune            structured pruning (neurons, GQA groups, channels, blocks) to a smaller standard config
  merge            weighted average of checkpoints of one architecture (WiSE-FT with the base)
  cache-teacher    run a teacher once, store its top-k log-probs per token
  kd               logit distillation (TRL), online teacher or cache
  select           choose new documents: perplexity band, dedup, decontamination
  generate         a teacher writes a target column (summaries, fiches, next turns): seq-KD data
  cpt              continued pretraining with replay and a KL to the former model
  sft              supervised fine-tuning on conversations (TRL SFTTrainer)
  eval             perplexity (forgetting report), French ROUGE, lighteval
  publish          push an output folder to the Hub (or the local hub folder)
  pipeline         run stage recipes in order, skipping finished ones (--from, --force)

commands:
  validate [PATH ...]   check recipes (default: recipes/) without running them
  estimate PATH ...     memory and time of recipes on GPUs, from the model's config alone (--gpus, --gpu)
  demo                  the offline demo: the tiny-llama pipeline

`llm4all <stage> --help` lists every key of a stage's recipe.
"""

DEMO_PIPELINE = "recipes/tiny-llama/pipeline.yaml"
DEFAULT_RECIPES = {"tiny-model": "recipes/tiny-llama/tiny-model/base.yaml"}


def _setup_logging() -> None:
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("httpx", "urllib3", "filelock", "fsspec"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # One progress bar per unit of work (training, a perplexity pass, a layer, a block), not one per weight
    # shard loaded or saved and per datasets map/filter: LLM4ALL_LIBRARY_BARS=1 brings those back.
    if os.environ.get("LLM4ALL_LIBRARY_BARS", "0") != "1":
        import datasets
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
        datasets.disable_progress_bars()


def validate(targets: Sequence[str]) -> int:
    """Check recipes (stage from the folder name) without running them."""
    from .configs import RECIPES
    from .parsing import parse_recipe
    from .paths import collect_recipes, stage_of

    files = collect_recipes(targets or ["recipes"])
    failed = 0
    for path in files:
        stage = stage_of(path)
        try:
            if stage not in RECIPES:
                raise RecipeError(
                    f"cannot tell the stage: put the recipe under recipes/<model>/<stage>/ with <stage> one of "
                    f"{', '.join(RECIPES)}",
                    source=str(path),
                )
            parse_recipe(stage, ["--config", str(path)], static=True)
            print(f"ok    {path}  ({stage})")
        except RecipeError as err:
            failed += 1
            print(f"FAIL  {err}")
    print(f"{len(files) - failed}/{len(files)} recipes valid")
    return 2 if failed else 0


def run_stage(stage: str, argv: Sequence[str], callbacks=None):
    """Parse and check a stage's recipe, then run it; returns the stage's result (metrics)."""
    from . import pipeline
    from .parsing import parse_recipe
    from .paths import resolve_in_repo
    from .stages import STAGES

    argv = ["--from_step" if a == "--from" else a for a in argv] if stage == "pipeline" else list(argv)
    if stage in DEFAULT_RECIPES and not any(a == "--config" or a.startswith("--config=") for a in argv):
        argv = ["--config", resolve_in_repo(DEFAULT_RECIPES[stage]), *argv]
    recipe = parse_recipe(stage, argv)
    try:
        command = pipeline if stage == "pipeline" else STAGES[stage]
        return command.run(recipe, callbacks=callbacks)
    except RecipeError as err:  # raised while running: name the recipe file (and line) or the command line
        raise recipe.origin.locate(err) from None


def _help(stage: str) -> int:
    from .configs import RECIPES
    from .parsing import _Parser

    parser = _Parser(RECIPES[stage])
    parser.prog = f"llm4all {stage} --config RECIPE.yaml"
    parser.print_help()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    from .configs import RECIPES

    _setup_logging()
    try:
        if command == "validate":
            return validate(rest)
        if command == "estimate":
            from .estimate import main as estimate

            return estimate(rest)
        if command == "demo":
            from .paths import resolve_in_repo

            run_stage("pipeline", ["--config", resolve_in_repo(DEMO_PIPELINE), *rest])
            return 0
        if command in RECIPES:
            if "-h" in rest or "--help" in rest:
                return _help(command)
            run_stage(command, rest)
            return 0
        close = difflib.get_close_matches(command, [*RECIPES, "validate", "demo"], n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        print(f"error: unknown command '{command}'{hint}\n\n{USAGE}", file=sys.stderr)
        return 2
    except RecipeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
