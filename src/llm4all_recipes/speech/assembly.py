"""A speech-text model assembled from two checkpoints: a Whisper (its encoder hears) and a causal LM (it writes);
the projector between them is new. What `tiny-model` (the tiny one) and `speech-sft` (a real one, from a Whisper
and an LM given separately) build before any training."""

import logging

from ..errors import RecipeError
from ..models import load_model, load_processor, load_tokenizer, model_kind, prepare_chat_model
from .speech_llm import AUDIO_TOKEN, SpeechLLMForConditionalGeneration, SpeechLLMProcessor

logger = logging.getLogger(__name__)


def check_parts(audio_encoder: str, language_model: str, encoder_key: str, lm_key: str) -> None:
    """One-line errors, from the configs alone, when the two checkpoints are not a Whisper and a causal LM."""
    if (kind := model_kind(audio_encoder, key=encoder_key)) != "speech":
        raise RecipeError(
            f"{audio_encoder} is not a speech encoder-decoder (Whisper): it is a {kind} model", key=encoder_key
        )
    if (kind := model_kind(language_model, key=lm_key)) != "text":
        raise RecipeError(f"{language_model} is not a causal language model: it is a {kind} model", key=lm_key)


def assemble(
    audio_encoder: str,
    language_model: str,
    *,
    stack_factor: int = 4,
    projector_hidden_size: int | None = None,
    seed: int = 42,
    dtype: str = "float32",
    encoder_key: str = "audio_encoder",
    lm_key: str = "model_name_or_path",
):
    """(model, processor): Whisper's encoder + a new projector (seeded) + the LM, whose tokenizer gains the audio
    placeholder as a special token (its embedding row: the mean of the others, as every added token here)."""
    import torch

    check_parts(audio_encoder, language_model, encoder_key, lm_key)
    whisper = load_model(audio_encoder, dtype=dtype, key=encoder_key)
    extractor = load_processor(audio_encoder, key=encoder_key).feature_extractor
    tokenizer = load_tokenizer(language_model, key=lm_key)
    lm = load_model(language_model, dtype=dtype, key=lm_key)
    tokenizer.add_special_tokens({"additional_special_tokens": [AUDIO_TOKEN]}, replace_extra_special_tokens=False)
    prepare_chat_model(lm, tokenizer)
    torch.manual_seed(seed)
    model = SpeechLLMForConditionalGeneration.from_parts(
        whisper, lm, tokenizer.convert_tokens_to_ids(AUDIO_TOKEN), stack_factor, projector_hidden_size
    )
    logger.info("speech-llm: %s's encoder + projector (stack %d) + %s", audio_encoder, stack_factor, language_model)
    return model, SpeechLLMProcessor(extractor, tokenizer, AUDIO_TOKEN, stack_factor)
