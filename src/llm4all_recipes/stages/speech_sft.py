"""Train a speech-text model ("LLM voix+texte": Whisper encoder + projector + causal LM) on audio + text rows.

    llm4all speech-sft --config recipes/tiny-speech-llm/speech-sft/simsamu.yaml            # stage 1: projector
    llm4all speech-sft --config recipes/tiny-speech-llm/speech-sft/simsamu-lora.yaml       # stage 2: + LoRA
    accelerate launch --config_file recipes/accelerate_configs/ddp.yaml -m llm4all_recipes speech-sft --config ...

The rows come from `source`, read as `transcribe` reads it (simsamu-layout calls cut along their RTTM turns,
or audio manifests), built per task (speech/sft_data.py) and split by situation as every simsamu dataset is. The
model is a speech-llm checkpoint, or assembled here from a Whisper (`audio_encoder`) and a causal LM. Stage 1
trains the projector alone (encoder and LM frozen), stage 2 the projector and LoRA adapters on the LM (merged into
the saved model); the loss is on the answer's tokens only. Same run-folder contract as every training stage: lock,
resume from the last complete checkpoint, keep-best on the validation loss, card with lineage and a snippet.
"""

import json
import logging

from ..cards import CardInfo
from ..configs import SpeechSFTRecipe
from ..errors import RecipeError
from ..hub import local_source
from ..models import chat_markers, count_parameters, load_model, load_processor
from ..outputs import finish, staged_output
from ..speech import sft_data
from ..trainers.speech import SpeechSFTTrainer
from ..training import fit, training_facts_md

logger = logging.getLogger(__name__)


def run(recipe: SpeechSFTRecipe, callbacks=None):
    # 1. Rows from the recordings, every data error before any model loads.
    splits, report = build_rows(recipe)
    if recipe.dry_run:
        plan = {"rows": {name: len(rows) for name, rows in splits.items()}, "data": report}
        print(json.dumps(plan, indent=2, default=str))
        return plan

    # 2. Model (assembled or loaded), then training in <output_dir>.tmp (resumable).
    import datasets

    with staged_output(recipe, "speech-sft", resume=True) as tmp:
        model, processor = load_speech_model(recipe)
        collator = sft_data.SpeechCollator(processor, recipe.max_length, chat_markers(processor.tokenizer)[1])
        trainer, metrics = fit(
            recipe,
            tmp,
            model=model,
            tokenizer=processor.tokenizer,
            train_dataset=datasets.Dataset.from_list(splits["train"]),
            eval_datasets={"validation": datasets.Dataset.from_list(splits[recipe.validation_split])},
            peft_config=lora_config(recipe) if recipe.use_peft else None,
            data_collator=collator,
            trainer_cls=SpeechSFTTrainer,
            callbacks=callbacks,
        )
        metrics["data"] = report
        save(trainer, tmp, recipe, metrics, processor)
        card = CardInfo(
            summary='A speech-text model ("LLM voix+texte"): Whisper\'s encoder hears the call, a projector maps its '
            "frames into the language model, which writes the answer. Trained with `llm4all speech-sft` on "
            f"{', '.join(recipe.tasks)} rows.",
            training=training_md(recipe, metrics),
            language=["fr"],
            tags=["speech-llm", "audio-text-to-text"],
        )
        finish(tmp, stage="speech-sft", recipe=recipe, metrics=metrics, parent=recipe.model_name_or_path, card=card)
    return metrics


def build_rows(recipe: SpeechSFTRecipe) -> tuple[dict[str, list[dict]], dict]:
    """({train, validation, ...: rows}, report), or a RecipeError when a split the run needs is empty."""
    splits, report = sft_data.speech_rows(local_source(recipe.source), recipe)
    for name in ("train", recipe.validation_split):
        if not splits.get(name):
            raise RecipeError(
                f"no {name} row from {recipe.source} (rows per split: { {k: len(v) for k, v in splits.items()} }): "
                "check the source's references, tasks and splits",
                key="source",
            )
    return splits, report


def load_speech_model(recipe: SpeechSFTRecipe):
    """(model, processor): assembled from audio_encoder + model_name_or_path, or a speech-llm checkpoint."""
    if recipe.audio_encoder:
        from ..speech.assembly import assemble

        dtype = "float32" if recipe.dtype == "auto" else recipe.dtype
        return assemble(
            recipe.audio_encoder,
            recipe.model_name_or_path,
            stack_factor=recipe.stack_factor,
            projector_hidden_size=recipe.projector_hidden_size,
            seed=recipe.seed,
            dtype=dtype,
        )
    model = load_model(recipe.model_name_or_path, dtype=recipe.dtype, revision=recipe.model_revision)
    return model, load_processor(recipe.model_name_or_path, recipe.model_revision)


def lora_config(recipe: SpeechSFTRecipe):
    """LoRA on the LM's linear layers only (never the encoder's), the projector trained in full beside them."""
    from peft import LoraConfig

    names = recipe.lora_target_modules or ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    return LoraConfig(
        r=recipe.lora_r,
        lora_alpha=recipe.lora_alpha,
        lora_dropout=recipe.lora_dropout,
        target_modules=rf"language_model\..*\.({'|'.join(names)})",
        modules_to_save=["projector"],
    )


def save(trainer, tmp, recipe: SpeechSFTRecipe, metrics: dict, processor) -> None:
    """The kept model (LoRA merged) and its processor at the root of `tmp`; the adapter under adapter/."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    if metrics["train"].get("kept") == "start":
        model, _ = load_speech_model(recipe)
    elif recipe.use_peft:
        model.save_pretrained(str(tmp / "adapter"))
        model = model.merge_and_unload()
    model.config.use_cache = True
    metrics.update(count_parameters(model))  # the saved model's (LoRA merged), not the adapters' wrapper
    if trainer.is_world_process_zero():
        model.save_pretrained(str(tmp))
        processor.save_pretrained(str(tmp))
    trainer.accelerator.wait_for_everyone()


def training_md(recipe: SpeechSFTRecipe, metrics: dict) -> str:
    train = metrics["train"]
    what = (
        "the projector only (Whisper encoder and language model frozen)"
        if recipe.trainable == "projector"
        else f"the projector and LoRA adapters on the language model (r={recipe.lora_r}, alpha={recipe.lora_alpha}), "
        "merged"
    )
    start = (
        f"assembled from `{recipe.audio_encoder}` (encoder) and `{recipe.model_name_or_path}` (language model), "
        f"frames stacked by {recipe.stack_factor}"
        if recipe.audio_encoder
        else f"`{recipe.model_name_or_path}`"
    )
    rows = metrics["data"]["rows"]
    lines = [
        f"Started from {start}; trained: {what}; loss on the answer tokens only.",
        "",
        f"- rows: {', '.join(f'{name} {sum(c.values())} ({c})' for name, c in rows.items())}",
        f"- steps: {train['global_step']}, learning rate {recipe.learning_rate}, "
        f"{recipe.per_device_train_batch_size} × {recipe.gradient_accumulation_steps} rows per device and step",
        *training_facts_md(metrics),
    ]
    before, after = metrics["eval_before"].get("validation"), metrics["eval"].get("validation")
    if before and after:
        lines.append(f"- validation loss {before['loss']:.4f} → {after['loss']:.4f}")
    return "\n".join(lines)
