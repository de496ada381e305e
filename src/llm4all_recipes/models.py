"""One place where every stage loads models and tokenizers (Hub id or local folder)."""

import logging
import os
import pickle as pickle_module
import re
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


def weights_problem(path: str, pickle: bool = False) -> str | None:
    """Why a local model folder has no loadable weights: no safetensors (pickle-only checkpoints are not
    loaded: they can run code), or a truncated/corrupt file. None for a Hub id or a sound folder."""
    folder = Path(path)
    if not (folder / "config.json").is_file():
        return None
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        pickles = sorted(p.name for p in folder.glob("*.bin") if p.name != "training_args.bin")
        if pickles and pickle:
            return None  # read by transformers with torch.load(weights_only=True): `llm4all convert` only
        if pickles:
            return (
                f"{path} holds only pickle weights ({', '.join(pickles)}); llm4all loads safetensors only: convert "
                "them once with `llm4all convert` (reads them with torch.load(weights_only=True): no code runs)"
            )
        return f"{path} has no .safetensors weights"
    for file in files:
        if problem := safetensors_problem(file):
            return problem
    return None


def _explain(path: str, exc: Exception, key: str) -> RecipeError:
    if os.path.isdir(path):
        if bad := _corrupt_json(path):
            return RecipeError(f"{bad[0]} is truncated or not JSON ({bad[1]}): copy or download it again", key=key)
        return RecipeError(f"{path} is not a loadable checkpoint: {exc}", key=key)
    if is_hub_id(path):
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
        hint = " (HF_HUB_OFFLINE is set and it is not in the local cache)" if offline else ""
        return RecipeError(f"cannot fetch Hub repo {path}{hint}: {exc}", key=key)
    return RecipeError(f"no such model folder: {path}", key=key)


def _corrupt_json(folder: str) -> tuple[str, str] | None:
    """(file, reason) of the first JSON file of a model folder that does not parse (a truncated tokenizer.json,
    config.json ...), or None."""
    import json

    for path in sorted(Path(folder).glob("*.json")):
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return str(path), str(exc)
    return None


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
    pickle: bool = False,
):
    """AutoModelForCausalLM (AutoModelForSpeechSeq2Seq for Whisper-like models) from a Hub id or a folder; errors
    name the recipe key (`pickle`: the convert stage may read pickle weights, with weights_only). Low-rank checkpoints
    (`model_type: llm4all_lowrank`, with a `compression_config`) load through the package's own class, no
    remote code needed."""
    from safetensors import SafetensorError
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSpeechSeq2Seq

    from . import compression  # noqa: F401  (registers the low-rank checkpoint format)
    from .speech import speech_llm  # noqa: F401  (registers the speech-text checkpoint format)

    path = local_hub_copy(path)
    if problem := weights_problem(path, pickle):
        raise RecipeError(problem, key=key)
    # pickle (the convert stage only): safetensors when there are, else the .bin files with weights_only=True
    kwargs = {
        "dtype": dtype,
        "revision": revision,
        "use_safetensors": None if pickle else True,
        "weights_only": True,
    }
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    kind = model_kind(path, revision, key)
    auto = {"speech-llm": AutoModel, "speech": AutoModelForSpeechSeq2Seq}.get(kind, AutoModelForCausalLM)
    try:
        return auto.from_pretrained(path, **kwargs)
    except pickle_module.UnpicklingError as exc:  # weights_only refused an object that is not a tensor
        raise RecipeError(
            f"{path}: its pickle weights hold more than tensors (loading them would run code); "
            f"refused ({str(exc).splitlines()[0]})",
            key=key,
        ) from None
    except (OSError, ValueError, SafetensorError) as exc:
        raise _explain(path, exc, key) from None


def base_model_type(path: str, revision: str | None = None, key: str = "model_name_or_path") -> str:
    """The architecture's model_type (a low-rank checkpoint's base one), from the config alone."""
    from transformers import AutoConfig

    from .compression import MODEL_TYPE
    from .speech import speech_llm  # noqa: F401  (registers the speech-text checkpoint format)

    path = local_hub_copy(path)
    try:
        config = AutoConfig.from_pretrained(path, revision=revision)
    except (OSError, ValueError) as exc:
        raise _explain(path, exc, key) from None
    return config.base_config.get("model_type", "") if config.model_type == MODEL_TYPE else config.model_type


def model_kind(path: str, revision: str | None = None, key: str = "model_name_or_path") -> str:
    """`speech-llm` (audio encoder + projector + causal LM), `speech` (Whisper-like encoder-decoder) or `text`
    (a causal LM), from the config alone."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES

    from .speech.speech_llm import MODEL_TYPE

    kind = base_model_type(path, revision, key)
    if kind == MODEL_TYPE:
        return "speech-llm"
    return "speech" if kind in MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES else "text"


def is_speech_model(path: str, revision: str | None = None, key: str = "model_name_or_path") -> bool:
    """A speech-to-text encoder-decoder (Whisper ...): loaded with AutoModelForSpeechSeq2Seq and a processor."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES

    return base_model_type(path, revision, key) in MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES


def empty_model(config):
    """The model of `config` on the meta device (no weights): enough for shapes, targets and parameter counts."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSpeechSeq2Seq
    from transformers.models.auto.modeling_auto import MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES

    speech = config.model_type in MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES
    with torch.device("meta"):
        return (AutoModelForSpeechSeq2Seq if speech else AutoModelForCausalLM).from_config(config)


def dense_skeleton(path: str, revision: str | None = None):
    """The dense model at `path` on the meta device, from its config alone; a low-rank checkpoint is refused
    (compress and prune start from the base model)."""
    from transformers import AutoConfig

    from .compression import MODEL_TYPE

    try:
        config = AutoConfig.from_pretrained(path, revision=revision)
    except (OSError, ValueError) as exc:
        raise RecipeError(f"cannot read the config of {path}: {exc}", key="model_name_or_path") from None
    if config.model_type == MODEL_TYPE:
        raise RecipeError(
            "this model is already low-rank: start from its base model (or export-dense it first)",
            key="model_name_or_path",
        )
    return empty_model(config)


def load_processor(path: str, revision: str | None = None, key: str = "model_name_or_path"):
    """AutoProcessor of a speech model (feature extractor + tokenizer)."""
    from transformers import AutoProcessor

    from . import compression  # noqa: F401
    from .speech import speech_llm  # noqa: F401

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


# ----------------------------------------------------------------------------- chat markers and stop tokens
CHAT_MARKER = re.compile(r"<\|[^|<>\s]+\|>")  # <|im_start|>, <|eot_id|>, <|start_header_id|> ...


def chat_markers(tokenizer) -> tuple[list[str], str | None]:
    """(the <|…|> control markers the tokenizer's chat template writes, the marker that ends an assistant turn),
    read from a rendered two-message probe conversation."""
    if not tokenizer.chat_template:
        return [], None
    user, answer = "\x02", "\x03"  # never part of a template
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": user}, {"role": "assistant", "content": answer}], tokenize=False
    )
    tail = text.split(answer, 1)[1] if answer in text else ""
    end = CHAT_MARKER.match(tail.lstrip()) or re.match(r"\S+", tail.lstrip())
    markers = list(dict.fromkeys([*CHAT_MARKER.findall(text), *([end.group(0)] if end else [])]))
    return markers, end.group(0) if end else None


END_OF_TEXT = re.compile(r"<\|end_?of_?text\|>|</s>|<eos>", re.I)  # pretraining document ends, by family


def document_boundaries(tokenizer) -> tuple[list[int], int | None]:
    """(the ids that open a document, the id that closes it) as in pretraining: the BOS the tokenizer adds on its
    own (Llama, Mistral), none where it adds none (Qwen, SmolLM2); the tokenizer's EOS, unless that EOS is its chat
    template's end of turn (instruct tokenizers: `<|eot_id|>`, `<|im_end|>`), then its end-of-text special token
    (`<|end_of_text|>`, `<|endoftext|>`)."""
    probe = tokenizer("a", add_special_tokens=True)["input_ids"]
    bos = tokenizer.bos_token_id
    opening = [bos] if bos is not None and probe and probe[0] == bos else []
    end = tokenizer.eos_token
    if end is not None and end == chat_markers(tokenizer)[1]:
        specials = [t for t in tokenizer.all_special_tokens if END_OF_TEXT.fullmatch(t) and t != end]
        end = specials[0] if specials else end
    return opening, (tokenizer.convert_tokens_to_ids(end) if end is not None else None)


def _single_token(tokenizer, marker: str) -> int | None:
    ids = tokenizer(marker, add_special_tokens=False)["input_ids"]
    return ids[0] if len(ids) == 1 else None


def add_chat_tokens(tokenizer) -> list[str]:
    """Make every marker of the chat template one (special) token of the tokenizer: a marker cut into pieces can
    neither be learnt as one unit nor stop generation. Returns the markers added (the model's embeddings must then
    grow: `prepare_chat_model`)."""
    markers, _ = chat_markers(tokenizer)
    missing = [m for m in markers if _single_token(tokenizer, m) is None]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
        logger.warning("chat template markers added to the tokenizer as special tokens: %s", ", ".join(missing))
    return missing


def prepare_chat_model(model, tokenizer) -> int | None:
    """Embeddings grown to the tokenizer (new rows: the mean of the existing ones, deterministically, so a
    reloaded starting model grows the same way), and the template's end-of-turn token added to the
    `generation_config.eos_token_id` generation stops at. Returns that token's id (None: the template has none)."""
    import torch

    old = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > old:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        with torch.no_grad():
            for layer in {
                id(m): m for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None
            }.values():
                layer.weight[old:] = layer.weight[:old].mean(0)
    _, end = chat_markers(tokenizer)
    eot = _single_token(tokenizer, end) if end else None
    config = getattr(model, "generation_config", None)
    if eot is not None and config is not None:
        current = config.eos_token_id
        stops = [] if current is None else [current] if isinstance(current, int) else list(current)
        if not stops and tokenizer.eos_token_id is not None:
            stops = [tokenizer.eos_token_id]
        if eot not in stops:
            config.eos_token_id = [*stops, eot]
    return eot
