"""The embedded default: train a French byte-level BPE tokenizer, build a small Llama from the recipe's
config, pretrain it briefly on the old-domain text, and record its held-out perplexity before/after.

    llm4all tiny-model                      # = --config recipes/tiny-llama/tiny-model/base.yaml
"""

import logging

from ..cards import CardInfo, perplexity_results
from ..configs import TinyModelRecipe, read_chat_template
from ..data.mixture import load_data
from ..evaluation.perplexity import held_out_perplexities
from ..outputs import finish, staged_output
from ..tiny import build_model, build_tokenizer
from ..training import fit, print_plan, save_trained

logger = logging.getLogger(__name__)


def run(recipe: TinyModelRecipe, callbacks=None):
    if recipe.whisper:
        return run_whisper(recipe)
    if recipe.speech_llm:
        return run_speech_llm(recipe)
    # 1. Tokenizer, then data (token-weighted mixture): all before any model exists.
    template = read_chat_template(recipe.chat_template_path)
    from transformers import LlamaConfig

    context = recipe.model_config.get("max_position_embeddings", LlamaConfig().max_position_embeddings)
    tokenizer = build_tokenizer(recipe.tokenizer_files, recipe.tokenizer_vocab_size, template, context)
    train, evals, report = load_data(recipe, tokenizer)
    if recipe.dry_run:
        return print_plan(recipe, "tiny-model", train, tokenizer, report)

    # 2. Random model and its perplexity on the held-out sets; 3. short pretraining (packed raw text), the same
    # measure (in <output_dir>.tmp, resumable).
    with staged_output(recipe, "tiny-model", resume=True) as tmp:
        model = build_model(recipe.model_config, tokenizer, recipe.seed)
        before = held_out_perplexities(model, tokenizer, evals, max_length=recipe.max_length, tag="untrained")
        trainer, metrics = fit(
            recipe,
            tmp,
            model=model,
            tokenizer=tokenizer,
            train_dataset=train,
            eval_datasets={},
            callbacks=callbacks,
        )
        after = held_out_perplexities(model, tokenizer, evals, max_length=recipe.max_length, tag="trained")
        metrics.update(
            eval_before=before,
            eval=after,
            perplexity_ratio={k: after[k]["perplexity"] / before[k]["perplexity"] for k in after},
            data=report,
        )
        save_trained(trainer, tmp, recipe, metrics)
        finish(
            tmp,
            stage="tiny-model",
            recipe=recipe,
            metrics=metrics,
            parent=None,
            card=CardInfo(
                model_name=recipe.hub_model_id or "tiny-llama-fr",
                summary="A tiny Llama with a byte-level BPE tokenizer trained on French text written for this "
                "project: the embedded default of llm4all-recipes, for tests and the offline demo. It is not a useful "
                "language model.",
                training=_training_md(recipe, metrics),
                results=perplexity_results(after, recipe.eval_datasets, recipe.max_length),
                data_report=report,
                license="apache-2.0",
                language=["fr"],
                chat=False,
            ),
        )
    return metrics


def _training_md(recipe: TinyModelRecipe, metrics: dict) -> str:
    cfg = recipe.model_config
    lines = [
        f"Built from a `LlamaConfig` ({cfg.get('num_hidden_layers')} layers, hidden size {cfg.get('hidden_size')}, "
        f"{metrics['parameters']:,} parameters) and a {recipe.tokenizer_vocab_size}-token byte-level BPE tokenizer "
        f"trained on {', '.join(f'`{f}`' for f in recipe.tokenizer_files)}; then pretrained for "
        f"{metrics['train']['global_step']} steps on packed blocks of {recipe.max_length} tokens.",
        "",
    ]
    for label, after in metrics["eval"].items():
        before = metrics["eval_before"][label]
        lines.append(
            f"- `{label}` perplexity: {before['perplexity']:.1f} (untrained) → {after['perplexity']:.1f} "
            f"(× {metrics['perplexity_ratio'][label]:.3f})"
        )
    return "\n".join(lines)


def run_whisper(recipe: TinyModelRecipe):
    """A random tiny Whisper (model + processor, French BPE + Whisper's special tokens): the speech tests' model."""
    import json

    from ..models import count_parameters
    from ..tiny import build_whisper, build_whisper_tokenizer

    tokenizer = build_whisper_tokenizer(recipe.tokenizer_files, recipe.tokenizer_vocab_size)
    model, processor = build_whisper(recipe.model_config, tokenizer, recipe.seed)
    metrics = {**count_parameters(model), "vocab_size": len(tokenizer)}
    if recipe.dry_run:
        print(json.dumps(metrics, indent=2))
        return metrics
    cfg = model.config
    card = CardInfo(
        model_name=recipe.hub_model_id or "tiny-whisper-fr",
        summary="A tiny random Whisper (WhisperForConditionalGeneration + processor) with a byte-level BPE "
        "trained on French text and Whisper's special tokens: the speech tests' model of llm4all-recipes. Its "
        "weights are random: it does not transcribe.",
        training=f"Built from a `WhisperConfig` ({cfg.encoder_layers}+{cfg.decoder_layers} layers, d_model "
        f"{cfg.d_model}, {cfg.num_mel_bins} mel bins, {metrics['parameters']:,} parameters) and a "
        f"{len(tokenizer)}-token vocabulary (BPE trained on {', '.join(f'`{f}`' for f in recipe.tokenizer_files)}); "
        "not trained.",
        license="apache-2.0",
        language=["fr"],
        tags=["automatic-speech-recognition", "whisper"],
    )
    write_built(recipe, model, processor, metrics, card)
    return metrics


def run_speech_llm(recipe: TinyModelRecipe):
    """A speech-text model assembled from a Whisper and a causal LM (new projector, not trained): speech-sft's start."""
    import json

    from ..models import count_parameters
    from ..speech.assembly import assemble

    if recipe.dry_run:
        print(json.dumps({"audio_encoder": recipe.audio_encoder, "language_model": recipe.language_model}, indent=2))
        return {}
    model, processor = assemble(
        recipe.audio_encoder,
        recipe.language_model,
        stack_factor=recipe.model_config.get("stack_factor", 4),
        projector_hidden_size=recipe.model_config.get("projector_hidden_size"),
        seed=recipe.seed,
        encoder_key="audio_encoder",
        lm_key="language_model",
    )
    parts = {
        "audio_encoder": sum(p.numel() for p in model.audio_encoder.parameters()),
        "projector": sum(p.numel() for p in model.projector.parameters()),
        "language_model": sum(p.numel() for p in model.language_model.parameters()),
    }
    metrics = {**count_parameters(model), "parts": parts, "stack_factor": model.config.stack_factor}
    card = CardInfo(
        model_name=recipe.hub_model_id or "speech-llm",
        summary=f'A speech-text model ("LLM voix+texte") assembled from `{recipe.audio_encoder}`\'s Whisper encoder '
        f"and the causal LM `{recipe.language_model}`, joined by a new projector (frames stacked by "
        f"{model.config.stack_factor}, then a two-layer MLP). The projector is untrained: `llm4all speech-sft` "
        "trains it.",
        training=f"Not trained. Parameters: encoder {parts['audio_encoder']:,}, projector {parts['projector']:,}, "
        f"language model {parts['language_model']:,}.",
        license="apache-2.0",
        language=["fr"],
        tags=["automatic-speech-recognition", "speech-llm"],
    )
    write_built(recipe, model, processor, metrics, card)
    return metrics


def write_built(recipe: TinyModelRecipe, model, processor, metrics: dict, card: CardInfo) -> None:
    """A model built, not trained here (with its processor): the output folder, its run files and card."""
    with staged_output(recipe, "tiny-model") as tmp:
        model.save_pretrained(str(tmp))
        processor.save_pretrained(str(tmp))
        finish(tmp, stage="tiny-model", recipe=recipe, metrics=metrics, parent=None, card=card)
