"""Compression: SVD-family low-rank initialisers, rank allocation, calibration statistics streamed layer by
layer, Lillama feature distillation, and the low-rank checkpoint format."""

from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSpeechSeq2Seq

from .lowrank import (
    MODEL_TYPE,
    LowRankConfig,
    LowRankForCausalLM,
    LowRankForSpeechSeq2Seq,
    LowRankLinear,
    to_dense,
)

# Inside this package, plain Auto* calls load low-rank checkpoints without remote code.
AutoConfig.register(MODEL_TYPE, LowRankConfig, exist_ok=True)
AutoModelForCausalLM.register(LowRankConfig, LowRankForCausalLM, exist_ok=True)
AutoModelForSpeechSeq2Seq.register(LowRankConfig, LowRankForSpeechSeq2Seq, exist_ok=True)

__all__ = [
    "MODEL_TYPE",
    "LowRankConfig",
    "LowRankForCausalLM",
    "LowRankForSpeechSeq2Seq",
    "LowRankLinear",
    "to_dense",
]
