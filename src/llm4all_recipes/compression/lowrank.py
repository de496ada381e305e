"""Low-rank checkpoints of llm4all-recipes: any transformers causal LM (or speech encoder-decoder: Whisper) whose
chosen linear layers are factored as W ≈ up @ down (down: r x n, up: m x r, bias kept on `up`).

This file is self-contained (torch + transformers only): it is copied into every compressed checkpoint as
`modeling_llm4all_lowrank.py`, so that plain transformers loads it without llm4all-recipes installed:

    AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)
    AutoModelForSpeechSeq2Seq.from_pretrained(path, trust_remote_code=True)    # a low-rank Whisper

A checkpoint's config.json has `model_type: llm4all_lowrank` (so loading without this code fails loudly
instead of silently building the base model with random weights), the base architecture's config under
`base_config`, and `compression_config` (method, ratio, `{module: rank}` ranks, base model, calibration).
The loaded model is an instance of the base architecture's class (e.g. LlamaForCausalLM) extended with
the low-rank modules; `save_pretrained` writes this format back. `to_dense` multiplies the factors out
and returns a plain model (loadable anywhere, without the size and speed gains).
"""

import json
import os
import shutil

import torch
from torch import nn
from transformers import AutoConfig, PretrainedConfig
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING,
    MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING,
)

MODEL_TYPE = "llm4all_lowrank"
MODELING_FILE = "modeling_llm4all_lowrank.py"
AUTO_MAP = {
    "AutoConfig": "modeling_llm4all_lowrank.LowRankConfig",
    "AutoModelForCausalLM": "modeling_llm4all_lowrank.LowRankForCausalLM",
}
# encoder-decoder speech models (Whisper): AutoModelForSpeechSeq2Seq.from_pretrained(path, trust_remote_code=True)
SPEECH_AUTO_MAP = {
    "AutoConfig": "modeling_llm4all_lowrank.LowRankConfig",
    "AutoModelForSpeechSeq2Seq": "modeling_llm4all_lowrank.LowRankForSpeechSeq2Seq",
}


class LowRankLinear(nn.Module):
    """y = up(down(x)): `rank * (in + out)` parameters instead of `in * out`."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True, device=None, dtype=None):
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.down = nn.Linear(in_features, rank, bias=False, device=device, dtype=dtype)
        self.up = nn.Linear(rank, out_features, bias=bias, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))

    @torch.no_grad()
    def dense_weight(self) -> torch.Tensor:
        return (self.up.weight.float() @ self.down.weight.float()).to(self.up.weight.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"


class LowRankConfig(PretrainedConfig):
    """The checkpoint's config.json: the base architecture's config + the compression facts."""

    model_type = MODEL_TYPE

    def __init__(self, base_config: dict | None = None, compression_config: dict | None = None, **kwargs):
        self.base_config = base_config or {}
        self.compression_config = compression_config or {}
        super().__init__(**kwargs)

    def to_base_config(self) -> PretrainedConfig:
        values = dict(self.base_config)
        config = AutoConfig.for_model(values.pop("model_type"), **values)
        config.compression_config = dict(self.compression_config)
        return config


def apply_low_rank(model: nn.Module, ranks: dict) -> None:
    """Swap each named nn.Linear for an (uninitialised) LowRankLinear of the given rank, in place."""
    for name, rank in ranks.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        old = getattr(parent, child)
        if isinstance(old, LowRankLinear):
            continue
        weight = old.weight
        setattr(
            parent,
            child,
            LowRankLinear(
                old.in_features,
                old.out_features,
                int(rank),
                old.bias is not None,
                weight.device,
                weight.dtype,
            ),
        )


_CLASSES: dict = {}


def low_rank_class(base_cls: type) -> type:
    """A subclass of a transformers model class that builds the low-rank modules named in its config and
    saves itself in this format."""
    if base_cls in _CLASSES:
        return _CLASSES[base_cls]

    def __init__(self, config, *args, **kwargs):
        base_cls.__init__(self, config, *args, **kwargs)
        apply_low_rank(self, getattr(config, "compression_config", {}).get("ranks", {}))

    def save_pretrained(self, save_directory, *args, is_main_process: bool = True, **kwargs):
        # the base class's save (safetensors, sharding, gathered state dicts), then this format's config + code
        base_cls.save_pretrained(self, save_directory, *args, is_main_process=is_main_process, **kwargs)
        if not is_main_process:
            return
        base = self.config.to_dict()
        compression = base.pop("compression_config", {})
        for key in ("architectures", "auto_map", "transformers_version"):
            base.pop(key, None)
        speech = getattr(self.config, "is_encoder_decoder", False) and self.main_input_name == "input_features"
        entry = LowRankForSpeechSeq2Seq if speech else LowRankForCausalLM
        config = LowRankConfig(base_config=base, compression_config=compression, architectures=[entry.__name__])
        config.auto_map = dict(SPEECH_AUTO_MAP if speech else AUTO_MAP)
        config.save_pretrained(save_directory)
        shutil.copyfile(__file__, os.path.join(save_directory, MODELING_FILE))

    name = f"LowRank{base_cls.__name__}"
    cls = type(name, (base_cls,), {"__init__": __init__, "save_pretrained": save_pretrained, "__module__": __name__})
    cls.__qualname__ = name
    globals()[name] = cls  # importable by name (pickling, copies)
    _CLASSES[base_cls] = cls
    return cls


class LowRankForCausalLM:
    """Entry point of `auto_map`: builds the base architecture's class with the low-rank modules."""

    config_class = LowRankConfig
    base_model_prefix = ""
    mapping = MODEL_FOR_CAUSAL_LM_MAPPING

    @classmethod
    def register_for_auto_class(cls, auto_class="AutoModelForCausalLM"):
        """Called by transformers on remote-code classes; the mapping lives in the checkpoint's auto_map."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, config: LowRankConfig | None = None, **kwargs):
        hub_kwargs = {k: kwargs[k] for k in ("revision", "cache_dir", "token", "local_files_only") if k in kwargs}
        if config is None:
            config = LowRankConfig.from_pretrained(pretrained_model_name_or_path, **hub_kwargs)
        base_config = config.to_base_config()
        model_cls = low_rank_class(cls.mapping[type(base_config)])
        kwargs.pop("trust_remote_code", None)
        return model_cls.from_pretrained(pretrained_model_name_or_path, *args, config=base_config, **kwargs)

    @classmethod
    def from_base(cls, model: nn.Module, compression_config: dict) -> nn.Module:
        """Turn a loaded base model into its low-rank class (modules swapped by the caller), in place."""
        model.__class__ = low_rank_class(type(model))
        model.config.compression_config = compression_config
        return model


class LowRankForSpeechSeq2Seq(LowRankForCausalLM):
    """Entry point of a speech encoder-decoder's `auto_map` (Whisper: WhisperForConditionalGeneration)."""

    mapping = MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING

    @classmethod
    def register_for_auto_class(cls, auto_class="AutoModelForSpeechSeq2Seq"):
        """See LowRankForCausalLM."""


@torch.no_grad()
def to_dense(model: nn.Module) -> nn.Module:
    """Multiply every LowRankLinear out into an nn.Linear; returns the plain base-class model (in place)."""
    for name, module in list(model.named_modules()):
        if isinstance(module, LowRankLinear):
            parent_name, _, child = name.rpartition(".")
            dense = nn.Linear(module.in_features, module.out_features, bias=module.up.bias is not None)
            dense = dense.to(device=module.up.weight.device, dtype=module.up.weight.dtype)
            dense.weight.copy_(module.dense_weight())
            if module.up.bias is not None:
                dense.bias.copy_(module.up.bias)
            setattr(model.get_submodule(parent_name) if parent_name else model, child, dense)
    for base_cls, cls in _CLASSES.items():
        if type(model) is cls:
            model.__class__ = base_cls
    if hasattr(model.config, "compression_config"):
        del model.config.compression_config
    return model


def read_config(path: str) -> dict:
    """config.json of a local checkpoint folder as a dict ({} if absent)."""
    file = os.path.join(path, "config.json")
    if not os.path.isfile(file):
        return {}
    with open(file, encoding="utf-8") as f:
        return json.load(f)
