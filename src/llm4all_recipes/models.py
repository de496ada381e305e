"""One place where every stage loads models and tokenizers (Hub id or local folder)."""

import logging
import os
from pathlib import Path

from .errors import RecipeError
from .paths import is_hub_id, local_hub_copy

logger = logging.getLogger(__name__)


def safetensors_problem(file: str | os.PathLike) -> str | None:
    """Why a .safetensors file cannot be loaded (truncated, not safetensors), from its header alone; None if whole."""
    import json
    import struct

    try:
        size = os.path.getsize(file)
        with open(file, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > size - 8 or n > 100 * 2**20:
                return f"{file} is not a safetensors file (or is truncated)"
            header = json.loads(f.read(n))
    except (OSError, struct.error, ValueError, UnicodeDecodeError):
        return f"{file} is not a safetensors file (or is truncated)"
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if size < 8 + n + end:
        return f"{file} is truncated ({size:,} bytes, its header describes {8 + n + end:,})"
    return None


def weights_problem(path: str) -> str | None:
    """Why a local model folder has no loadable weights: no safetensors (pickle-only checkpoints are not
    loaded: they can run code), or a truncated/corrupt file. None for a Hub id or a sound folder."""
    folder = Path(path)
    if not (folder / "config.json").is_file():
        return None
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        pickles = sorted(p.name for p in folder.glob("*.bin") if p.name != "training_args.bin")
        if pickles:
            return (f"{path} holds only pickle weights ({', '.join(pickles)}); llm4all loads safetensors only: convert "
                    "them with `model.save_pretrained(folder)` from a trusted environment")  # fmt: skip
        return f"{path} has no .safetensors weights"
    for file in files:
        if problem := safetensors_problem(file):
            return problem
    return None


def _explain(path: str, exc: Exception, key: str) -> RecipeError:
    if os.path.isdir(path):
        return RecipeError(f"{path} is not a loadable checkpoint: {exc}", key=key)
    if is_hub_id(path):
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
        hint = " (HF_HUB_OFFLINE is set and it is not in the local cache)" if offline else ""
        return RecipeError(f"cannot fetch Hub repo {path}{hint}: {exc}", key=key)
    return RecipeError(f"no such model folder: {path}", key=key)


def load_tokenizer(path: str, revision: str | None = None, key: str = "model_name_or_path"):
    """AutoTokenizer with a pad token (the EOS when the tokenizer has none)."""
    from transformers import AutoTokenizer

    from . import compression  # noqa: F401  (registers the low-rank checkpoint format)

    path = local_hub_copy(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, revision=revision)
    except (OSError, ValueError) as exc:
        raise _explain(path, exc, key) from None
    for key in ("is_local", "local_files_only"):  # how it was loaded here: not for tokenizer_config.json
        tokenizer.init_kwargs.pop(key, None)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
        logger.info("tokenizer of %s has no pad token: using its EOS %r", path, tokenizer.eos_token)
    return tokenizer


def load_model(
    path: str,
    *,
    dtype: str = "auto",
    revision: str | None = None,
    attn_implementation: str | None = None,
    key: str = "model_name_or_path",
):
    """AutoModelForCausalLM (AutoModelForSpeechSeq2Seq for Whisper-like models) from a Hub id or a folder; errors
    name the recipe key. Low-rank checkpoints
    (`model_type: llm4all_lowrank`, with a `compression_config`) load through the package's own class, no
    remote code needed."""
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoModelForSpeechSeq2Seq

    from . import compression  # noqa: F401  (registers the low-rank checkpoint format)

    path = local_hub_copy(path)
    if problem := weights_problem(path):
        raise RecipeError(problem, key=key)
    kwargs = {"dtype": dtype, "revision": revision, "use_safetensors": True}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    auto = AutoModelForSpeechSeq2Seq if is_speech_model(path, revision, key) else AutoModelForCausalLM
    try:
        return auto.from_pretrained(path, **kwargs)
    except (OSError, ValueError, SafetensorError) as exc:
        raise _explain(path, exc, key) from None


def base_model_type(path: str, revision: str | None = None, key: str = "model_name_or_path") -> str:
    """The architecture's model_type (a low-rank checkpoint's base one), from the config alone."""
    from transformers import AutoConfig

    from .compression import MODEL_TYPE

    path = local_hub_copy(path)
    try:
        config = AutoConfig.from_pretrained(path, revision=revision)
    except (OSError, ValueError) as exc:
        raise _explain(path, exc, key) from None
    return config.base_config.get("model_type", "") if config.model_type == MODEL_TYPE else config.model_type


def is_speech_model(path: str, revision: str | None = None, key: str = "model_name_or_path") -> bool:
    """A speech-to-text encoder-decoder (Whisper ...): loaded with AutoModelForSpeechSeq2Seq and a processor."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES

    return base_model_type(path, revision, key) in MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES


def load_processor(path: str, revision: str | None = None, key: str = "model_name_or_path"):
    """AutoProcessor of a speech model (feature extractor + tokenizer)."""
    from transformers import AutoProcessor

    from . import compression  # noqa: F401

    path = local_hub_copy(path)
    try:
        processor = AutoProcessor.from_pretrained(path, revision=revision)
    except (OSError, ValueError) as exc:
        raise _explain(path, exc, key) from None
    if not hasattr(processor, "feature_extractor"):
        raise RecipeError(f"{path} has no audio feature extractor (preprocessor_config.json)", key=key)
    return processor


def count_parameters(model) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"parameters": total, "trainable_parameters": trainable}


def compression_config(model) -> dict | None:
    """The `compression_config` of a loaded low-rank model, or None for a dense one."""
    return getattr(model.config, "compression_config", None)


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device
