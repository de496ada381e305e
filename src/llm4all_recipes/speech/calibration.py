"""Calibration and held-out data of a speech model (Whisper) for compress and feature-distill.

A source of `datasets` / `eval_datasets` is any dataset the mixture reader loads (a .jsonl manifest, a
save_to_disk folder, a Hub dataset) with an `audio` column (a path, relative to the manifest's folder, or the
datasets Audio feature's {path, bytes}) and a `text` column (the reference transcript). Each sample is one
recording: its log-mel features (one model window, padded or cut as the processor does) feed the encoder, and
its reference, after Whisper's prompt (<|startoftranscript|><|fr|><|transcribe|><|notimestamps|>), feeds the
decoder (teacher forcing, cut to `calibration_seq_len` tokens, padded with <|endoftext|> under an attention
mask). Both stacks are thus calibrated on what they see when the model transcribes that audio.
"""

import logging
import math
import random
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import RecipeError
from .audio import AudioError, decode

logger = logging.getLogger(__name__)
COLUMNS = ("audio", "text")


def _folder(path: str) -> Path:
    p = Path(path)
    return p if p.is_dir() else p.parent


def read_pairs(sources, key: str) -> dict[str, list[tuple[str | bytes, str, str]]]:
    """{label: [(audio path or bytes, name for errors, reference)]} of each source."""
    from ..data.mixture import load_source

    out = {}
    for i, src in enumerate(sources):
        ds = load_source(src, f"{key}[{i}]", COLUMNS)
        if "audio" in ds.features and hasattr(ds.features["audio"], "decode"):
            import datasets

            ds = ds.cast_column("audio", datasets.Audio(decode=False))
        pairs = []
        for row in ds:
            audio, text = row["audio"], row["text"]
            if isinstance(audio, dict):
                name = audio.get("path") or f"{src.path} row {len(pairs)}"
                audio = audio["bytes"] if audio.get("bytes") else str(_folder(src.path) / audio["path"])
            else:
                name = audio = str(_folder(src.path) / audio)
            pairs.append((audio, name, text))
        label = src.tag if src.tag not in out else f"{src.tag}_{i}"
        out[label] = pairs
    return out


def encode(processor, pairs, max_tokens: int, language: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Model inputs of (audio, name, text) pairs, and the one-line errors of the unreadable ones (left out)."""
    tokenizer = processor.tokenizer
    tokenizer.set_prefix_tokens(language=language, task="transcribe", predict_timestamps=False)
    features, ids, errors, too_long = [], [], [], 0
    window = processor.feature_extractor.n_samples
    for audio, name, text in pairs:
        try:
            samples = decode(audio, name=name)
        except AudioError as err:
            errors.append(str(err))
            continue
        if len(samples) > window:  # the features would hold its first window, the transcript all of it
            too_long += 1
            continue
        features.append(
            processor.feature_extractor(samples, sampling_rate=16_000, return_tensors="pt").input_features[0]
        )
        ids.append(tokenizer(text).input_ids[: max_tokens + 1])  # prompt + text + <|endoftext|>
    if too_long:
        logger.warning(
            "%d recording(s) longer than the model's %d-s window left out (their transcript would not "
            "match the audio the model sees)",
            too_long,
            window // 16_000,
        )
    if not features:
        return {}, errors or ["no recording fits the model's window"]
    width = max(len(x) for x in ids)
    eot = tokenizer.eos_token_id
    tokens = torch.full((len(ids), width), eot, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for k, seq in enumerate(ids):
        tokens[k, : len(seq)] = torch.tensor(seq)
        mask[k, : len(seq)] = 1
    return {
        "input_features": torch.stack(features),
        "decoder_input_ids": tokens[:, :-1].contiguous(),
        "decoder_attention_mask": mask[:, :-1].contiguous(),
        "labels": tokens[:, 1:].masked_fill(mask[:, 1:] == 0, -100),
    }, errors


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What LayerStream feeds the model (no labels)."""
    return {k: v for k, v in batch.items() if k != "labels"}


def sample(pairs: list, n: int, seed: int, key: str) -> list:
    if not pairs:
        raise RecipeError("no (audio, text) row", key=key)
    if len(pairs) < n:
        logger.warning("%s: %d recordings, fewer than the %d asked: using them all", key, len(pairs), n)
        return list(pairs)
    return random.Random(seed).sample(pairs, n)


def calibration_inputs(recipe, processor, n: int, seed: int, pairs=None) -> dict[str, torch.Tensor]:
    """`n` recordings drawn (seeded) from the recipe's `datasets`, encoded; unreadable audio fails here, naming
    the file (calibration data is the recipe's own choice: no silent gaps)."""
    if pairs is None:
        pairs = [p for ps in read_pairs(recipe.datasets, "datasets").values() for p in ps]
    batch, errors = encode(processor, sample(pairs, n, seed, "datasets"), recipe.calibration_seq_len, recipe.language)
    if errors:
        raise RecipeError(
            f"{errors[0]}" + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""), key="datasets"
        )
    return batch


def eval_inputs(recipe, processor) -> dict[str, dict[str, torch.Tensor]]:
    """Every recording of each of `eval_datasets`, encoded, by label."""
    out = {}
    for label, pairs in read_pairs(recipe.eval_datasets, "eval_datasets").items():
        batch, errors = encode(processor, pairs, recipe.calibration_seq_len, recipe.language)
        if errors:
            raise RecipeError(errors[0], key="eval_datasets")
        out[label] = batch
    return out


@torch.no_grad()
def transcript_perplexity(model, batch: dict[str, torch.Tensor], *, device: str, batch_size: int = 8) -> dict:
    """Teacher-forced perplexity of the reference transcripts given their audio: {perplexity, loss, tokens}."""
    was_training = model.training
    model.eval()
    home = next(model.parameters()).device
    model.to(device)
    dtype = next(model.parameters()).dtype
    nll, count = 0.0, 0
    try:
        for start in range(0, len(batch["labels"]), batch_size):
            part = {k: v[start : start + batch_size].to(device) for k, v in batch.items()}
            logits = model(
                input_features=part["input_features"].to(dtype),
                decoder_input_ids=part["decoder_input_ids"],
                decoder_attention_mask=part["decoder_attention_mask"],
            ).logits.float()
            nll += float(F.cross_entropy(logits.transpose(1, 2), part["labels"], reduction="sum", ignore_index=-100))
            count += int((part["labels"] != -100).sum())
    finally:
        model.to(home)
        model.train(was_training)
    return {"perplexity": math.exp(nll / count), "loss": nll / count, "tokens": count}


def transcript_perplexities(model, sets: dict, *, device: str, batch_size: int = 8) -> dict:
    return {label: transcript_perplexity(model, b, device=device, batch_size=batch_size) for label, b in sets.items()}
