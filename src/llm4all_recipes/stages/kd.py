"""Logit distillation (KD) of a student from a teacher: healing a compressed model, or a smaller student.

    llm4all kd --config recipes/tiny-llama/kd/heal.yaml
    accelerate launch --config_file recipes/accelerate_configs/zero3.yaml -m llm4all_recipes kd --config ...

With `teacher_cache` (a `cache-teacher` output) the student trains on the cache's rows and the cached top-k
teacher log-probs, with no teacher forward. A low-rank student is written back in the low-rank format.
"""

import logging

from datasets import load_from_disk

from ..cards import CardInfo, model_ref, perplexity_results
from ..configs import KDRecipe, read_chat_template
from ..data.mixture import load_data, load_eval_sets
from ..errors import RecipeError
from ..evaluation.perplexity import held_out_meter
from ..models import load_model, load_tokenizer, resolve_device
from ..outputs import finish, staged_output
from ..trainers.kd import (
    CachedTeacherCollator,
    KDTrainer,
    TeacherCache,
    data_hash,
    model_identity,
    tokenizer_hash,
)
from ..training import (
    fit,
    lora_config,
    print_plan,
    save_trained,
    text_eval_rows,
    training_facts_md,
    world_size,
)

logger = logging.getLogger(__name__)


def cache_reads_warning(recipe: KDRecipe, rows: int) -> str | None:
    """How many times a run reads its teacher cache, when it reads it more than 1.5 times: every repeat shows the
    student the same targets (typically a one-GPU recipe's max_steps on 8 GPUs)."""
    world = world_size()
    per_step = recipe.per_device_train_batch_size * recipe.gradient_accumulation_steps * world
    consumed = recipe.max_steps * per_step if recipe.max_steps > 0 else recipe.num_train_epochs * rows
    if consumed <= 1.5 * rows:
        return None
    return (
        f"this run reads the teacher cache's {rows:,} rows {consumed / rows:.1f} times ({consumed:,} rows: "
        f"{per_step} per step on {world} process(es)): cache more rows (cache-teacher's max_rows) or train "
        "fewer steps"
    )


def open_cache(recipe: KDRecipe, tokenizer):
    """The cache, its rows and collator, after checking its fingerprint against this run."""
    cache = TeacherCache(recipe.teacher_cache)
    meta = cache.meta
    if meta["tokenizer"] != tokenizer_hash(tokenizer):
        raise RecipeError(
            "fingerprint mismatch: the student's tokenizer differs from the one the cache was made with",
            key="teacher_cache",
        )
    if meta["temperature"] != recipe.kd_temperature:
        raise RecipeError(
            f"fingerprint mismatch: the cache holds log-probs at temperature {meta['temperature']}, the recipe asks "
            f"{recipe.kd_temperature}",
            key="kd_temperature",
        )
    rows = load_from_disk(str(cache.path / cache.DATA))
    if data_hash(rows) != meta["data"]:
        raise RecipeError("fingerprint mismatch: the cache's data/ changed since the teacher ran", key="teacher_cache")
    return cache, rows, CachedTeacherCollator(cache)


def run(recipe: KDRecipe, callbacks=None):
    # 1. Tokenisers, data, cache fingerprint: every input error before any model loads.
    tokenizer = load_tokenizer(recipe.model_name_or_path, recipe.model_revision)
    if recipe.chat_template_path:
        tokenizer.chat_template = read_chat_template(recipe.chat_template_path)
    check_teacher(recipe, tokenizer)
    cache, train, collator, report = training_rows(recipe, tokenizer)
    perplexity_sets = load_eval_sets(recipe.eval_datasets, needed=("text",))
    if recipe.dry_run:
        return dry_run(recipe, train, tokenizer, report, cache)

    with staged_output(recipe, "kd", resume=True) as tmp:
        # 2. Student (maybe low-rank, maybe + LoRA) and teacher (once, eval mode, its own dtype).
        student = load_model(recipe.model_name_or_path, dtype=recipe.dtype, revision=recipe.model_revision)
        teacher = load_teacher(recipe, cache)
        measure = held_out_meter(recipe, tokenizer, perplexity_sets, resolve_device("auto"))
        before = measure(student, "student before", recipe.model_name_or_path)
        teacher_ppl = {} if teacher is None else measure(teacher, "teacher", recipe.teacher_model_name_or_path)

        # 3. Train: TRL's SFT machinery, KD loss (resume from <output_dir>.tmp).
        trainer, metrics = fit(
            recipe,
            tmp,
            model=student,
            tokenizer=tokenizer,
            train_dataset=train,
            trainer_cls=KDTrainer,
            eval_datasets=text_eval_rows(perplexity_sets, tokenizer, recipe.max_length) if recipe.keep_best else {},
            peft_config=lora_config(recipe) if recipe.use_peft else None,
            callbacks=callbacks,
            data_collator=collator,
            teacher_model=None if recipe.teacher_cache else teacher,
            **kd_loss_args(recipe),
        )
        healed = save_trained(trainer, tmp, recipe, metrics)
        after = measure(healed, "student after")
        metrics.update(eval_before=before, eval=after, teacher_eval=teacher_ppl, data=report)
        finish(
            tmp,
            stage="kd",
            recipe=recipe,
            metrics=metrics,
            parent=recipe.model_name_or_path,
            card=card_info(recipe, metrics, report),
        )
    return metrics


def check_teacher(recipe: KDRecipe, tokenizer) -> None:
    """The teacher's vocabulary is the student's (logit distillation), and its hidden-state pairs exist."""
    if recipe.teacher_model_name_or_path:
        teacher_tok = load_tokenizer(recipe.teacher_model_name_or_path, key="teacher_model_name_or_path")
        if teacher_tok.get_vocab() != tokenizer.get_vocab():
            raise RecipeError(
                "the teacher and the student have different tokenizers (logit distillation needs the same vocabulary)",
                key="teacher_model_name_or_path",
            )
    if recipe.kd_hidden_coef:
        check_hidden_pairs(recipe)


def training_rows(recipe: KDRecipe, tokenizer):
    """(teacher cache or None, training rows, their collator or None, mixture report): the cache's rows as they are,
    or the recipe's datasets (its eval_datasets are held-out text, read by the caller)."""
    if not recipe.teacher_cache:
        train, _, report = load_data(recipe, tokenizer, evals=False)
        return None, train, None, report
    cache, train, collator = open_cache(recipe, tokenizer)
    recipe.packing, recipe.remove_unused_columns = False, False
    recipe.assistant_only_loss = False  # the cache's labels already carry the assistant-token mask
    recipe.dataset_kwargs = {"skip_prepare_dataset": True}  # the cache's rows are used unchanged
    report = [
        {
            "source": recipe.teacher_cache,
            "split": "data",
            "used_rows": len(train),
            "available_rows": len(train),
            "share": 1.0,
        }
    ]
    if warning := cache_reads_warning(recipe, len(train)):
        logger.warning(warning)
    return cache, train, collator, report


def dry_run(recipe: KDRecipe, train, tokenizer, report, cache) -> dict:
    if cache is None:
        return print_plan(recipe, "kd", train, tokenizer, report)
    print(f"# kd from cache {recipe.teacher_cache}: {len(train)} rows x {cache.meta['max_length']} tokens")
    if warning := cache_reads_warning(recipe, len(train)):
        print(f"# WARNING: {warning}")
    return {"rows": len(train)}


def load_teacher(recipe: KDRecipe, cache):
    """The teacher model (None when distilling from a cache alone), checked against the cache it made."""
    if not recipe.teacher_model_name_or_path:
        return None
    teacher = load_model(
        recipe.teacher_model_name_or_path, dtype=recipe.teacher_dtype, key="teacher_model_name_or_path"
    )
    if cache is not None and model_identity(teacher) != cache.meta["teacher_identity"]:
        raise RecipeError(
            "fingerprint mismatch: this teacher is not the one the cache was made with",
            key="teacher_model_name_or_path",
        )
    return teacher


def kd_loss_args(recipe: KDRecipe) -> dict:
    """The KD trainer's loss keys, from the recipe."""
    return {
        "kd_loss": recipe.kd_loss,
        "kd_beta": recipe.kd_beta,
        "kd_temperature": recipe.kd_temperature,
        "kd_alpha": recipe.kd_alpha,
        "kd_hidden_coef": recipe.kd_hidden_coef,
    }


def card_info(recipe: KDRecipe, metrics: dict, report: list) -> CardInfo:
    teacher = model_ref(recipe.teacher_model_name_or_path) if recipe.teacher_model_name_or_path else "a cached teacher"
    return CardInfo(
        summary=f"{model_ref(recipe.model_name_or_path)} distilled from {teacher} (logit distillation).",
        training=distillation_md(recipe, metrics),
        results=perplexity_results(metrics["eval"], recipe.eval_datasets, recipe.perplexity_max_length),
        data_report=report,
        tags=["distillation"],
        chat=recipe.data_format == "messages",
    )


def check_hidden_pairs(recipe: KDRecipe) -> None:
    """The hidden-state loss's block map, from the two configs (before any weights load)."""
    from transformers import AutoConfig

    from ..paths import local_hub_copy
    from ..trainers.kd import hidden_pairs

    try:
        student = AutoConfig.from_pretrained(local_hub_copy(recipe.model_name_or_path), revision=recipe.model_revision)
        teacher = AutoConfig.from_pretrained(local_hub_copy(recipe.teacher_model_name_or_path))
        hidden_pairs(student.to_base_config() if hasattr(student, "to_base_config") else student, teacher)
    except (OSError, ValueError) as exc:
        raise RecipeError(str(exc), key="kd_hidden_coef") from None


def distillation_md(recipe: KDRecipe, metrics: dict) -> str:
    teacher = model_ref(recipe.teacher_model_name_or_path)
    source = (
        f"cached top-k log-probs ({model_ref(recipe.teacher_cache)})"
        if recipe.teacher_cache
        else "the teacher run on every batch"
    )
    lines = [
        "### Distillation",
        "",
        f"- teacher: {teacher}, through {source}",
        f"- loss: `{recipe.kd_loss}`"
        + (f" (β = {recipe.kd_beta})" if recipe.kd_loss == "jsd" else "")
        + f", temperature τ = {recipe.kd_temperature} (× τ²), α = {recipe.kd_alpha} (weight of the cross-entropy), on "
        + ("assistant tokens" if recipe.data_format == "messages" else "every token")
        + (
            f"; plus {recipe.kd_hidden_coef} × the hidden-state loss of the kept blocks"
            if recipe.kd_hidden_coef
            else ""
        ),
        f"- {metrics['train']['global_step']} steps, learning rate {recipe.learning_rate}, tokens seen "
        f"{int(metrics['train'].get('num_tokens') or 0):,}",
        *training_facts_md(metrics),
    ]
    for k, v in metrics["eval"].items():
        t = metrics["teacher_eval"].get(k, {}).get("perplexity")
        lines.append(
            f"- perplexity `{k}`: {metrics['eval_before'][k]['perplexity']:.2f} → {v['perplexity']:.2f}"
            + (f" (teacher {t:.2f})" if t else "")
        )
    return "\n".join(lines)
