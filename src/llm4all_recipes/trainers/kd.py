"""Off-policy logit distillation on TRL: `KDTrainer` is TRL's SFTTrainer with its loss replaced.

Everything else — data preparation, packing, assistant-only masks, LoRA, resume, logging, accelerate
(DDP / FSDP / DeepSpeed) — is SFTTrainer's. The teacher is either a model (loaded once, eval mode, no grad,
its own dtype, run on every batch) or an offline top-k cache written by `llm4all cache-teacher`: then the
batches carry `teacher_logprobs` / `teacher_indices` read from memory-mapped shards and no teacher runs.
Generation is never needed: the sequences are the dataset's (for on-policy distillation see TRL's
`trl.experimental.gkd.GKDTrainer`).
"""

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from trl import SFTTrainer

from ..data.packing import StackCollator
from .losses import cross_entropy, distillation_loss, hidden_state_loss


def hidden_pairs(student_config, teacher_config) -> tuple[list[tuple[int, int]], list[int] | None]:
    """([(student hidden-state index, teacher index)], teacher channels kept) for the hidden-state loss: a student
    pruned from the teacher maps its block j to the teacher's kept_layers[j] (pruning_config), another student
    needs the teacher's depth and width. The last blocks are left out: their hidden state is after the final norm."""
    pruning = getattr(student_config, "pruning_config", None) or {}
    n_s, n_t = student_config.num_hidden_layers, teacher_config.num_hidden_layers
    kept = pruning.get("kept_layers") or list(range(n_s))
    channels = pruning.get("kept_channels")
    width = len(channels) if channels else teacher_config.hidden_size
    original = pruning.get("sizes_before")
    teacher_sizes = {k: getattr(teacher_config, k, None) for k in original or {}}
    if (
        len(kept) != n_s
        or (not pruning and n_s != n_t)
        or max(kept) >= n_t
        or student_config.hidden_size != width
        or (channels and max(channels) >= teacher_config.hidden_size)
        or (original and original != teacher_sizes)
    ):
        raise ValueError(
            "kd_hidden_coef needs a student pruned from this teacher (its pruning_config maps blocks and channels), "
            f"or one with the teacher's depth and width ({n_s} vs {n_t} blocks, hidden size "
            f"{student_config.hidden_size} vs {width})"
        )
    return [(j + 1, kept[j] + 1) for j in range(n_s - 1) if kept[j] < n_t - 1], channels


class KDTrainer(SFTTrainer):
    """SFTTrainer whose loss is α·CE + (1−α)·τ²·D(teacher ‖ student) on the trained tokens."""

    def __init__(
        self,
        *args,
        teacher_model=None,
        kd_loss: str = "forward_kl",
        kd_beta: float = 0.5,
        kd_temperature: float = 1.0,
        kd_alpha: float = 0.0,
        kd_hidden_coef: float = 0.0,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.kd = {"loss": kd_loss, "beta": kd_beta, "temperature": kd_temperature, "alpha": kd_alpha}
        self.hidden_coef = kd_hidden_coef
        if kd_hidden_coef:
            self.hidden_pairs, channels = hidden_pairs(self.model.config, teacher_model.config)
            self.hidden_channels = None if channels is None else torch.tensor(channels)
        self.vocab_size = len(self.processing_class)
        self.teacher = None
        if teacher_model is not None:
            teacher_model.eval()
            teacher_model.requires_grad_(False)
            if self.is_deepspeed_enabled:
                from trl.models.utils import prepare_deepspeed

                self.teacher = prepare_deepspeed(teacher_model, self.accelerator)
            elif self.is_fsdp_enabled:
                from trl.models.utils import prepare_fsdp

                self.teacher = prepare_fsdp(teacher_model, self.accelerator)
            else:
                self.teacher = self.accelerator.prepare_model(teacher_model, evaluation_mode=True)

    def held_out_loss(self, model, inputs, return_outputs=False):
        """Evaluation: the student's own next-token cross-entropy (its log-perplexity), whatever the training loss."""
        for key in ("teacher_logprobs", "teacher_indices", "row", "kl_mask"):
            inputs.pop(key, None)
        labels = inputs.pop("labels")
        outputs = model(**inputs, use_cache=False)
        targets = labels[:, 1:]
        loss = cross_entropy(outputs.logits[:, :-1, : self.vocab_size], targets, targets != -100)
        return (loss, outputs) if return_outputs else loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not model.training:
            return self.held_out_loss(model, inputs, return_outputs)
        mode = "train"
        cached = {k: inputs.pop(k) for k in ("teacher_logprobs", "teacher_indices") if k in inputs}
        inputs.pop("row", None)
        labels = inputs["labels"]
        forward = {k: v for k, v in inputs.items() if k != "labels"}
        forward["use_cache"] = False
        if self.hidden_coef:
            forward["output_hidden_states"] = True
        outputs = model(**forward)
        student = outputs.logits[:, :-1, : self.vocab_size]
        targets = labels[:, 1:]
        mask = targets != -100
        if cached:
            teacher = {
                "teacher_logprobs": cached["teacher_logprobs"][:, :-1],
                "teacher_indices": cached["teacher_indices"][:, :-1],
            }
        else:
            if self.teacher is None:
                raise ValueError("KDTrainer needs a teacher_model, or batches from a teacher cache")
            with torch.no_grad():
                teacher_out = self.teacher(**forward)
            teacher = {"teacher_logits": teacher_out.logits[:, :-1, : self.vocab_size]}
        loss = distillation_loss(
            student, mask, labels=targets, num_items=num_items_in_batch, **teacher, **{k: v for k, v in self.kd.items()}
        )
        if self.hidden_coef and self.hidden_pairs:
            channels = None if self.hidden_channels is None else self.hidden_channels.to(student.device)
            loss = loss + self.hidden_coef * hidden_state_loss(
                [outputs.hidden_states[s][:, :-1] for s, _ in self.hidden_pairs],
                [teacher_out.hidden_states[t][:, :-1] for _, t in self.hidden_pairs],
                mask,
                channels,
                num_items=num_items_in_batch,
            )
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes
        if "attention_mask" in inputs:
            self._total_train_tokens += self.accelerator.gather_for_metrics(inputs["attention_mask"].sum()).sum().item()
            self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
        return (loss, outputs) if return_outputs else loss


# ----------------------------------------------------------------------------- the offline teacher cache
class TeacherCache:
    """A cache-teacher output: the packed dataset (data/) and, per token, the teacher's top-k log-probabilities
    and token ids, in row shards of numpy arrays opened memory-mapped (topk/logprobs-NNNNN.npy, indices-NNNNN.npy)."""

    DATA, TOPK, FINGERPRINT = (
        "data",
        "topk",
        "fingerprint.json",
    )  # the layout, written by stages/cache_teacher.py

    @classmethod
    def shard_files(cls, folder: str | os.PathLike, i: int) -> tuple[Path, Path]:
        """(logprobs, indices) numpy files of row shard i."""
        topk = Path(folder) / cls.TOPK
        return topk / f"logprobs-{i:05d}.npy", topk / f"indices-{i:05d}.npy"

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.meta = json.loads((self.path / self.FINGERPRINT).read_text())
        self.shard_rows = self.meta["shard_rows"]
        self._open: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def shard(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        if i not in self._open:
            logprobs, indices = self.shard_files(self.path, i)
            self._open[i] = (np.load(logprobs, mmap_mode="r"), np.load(indices, mmap_mode="r"))
        return self._open[i]

    def rows(self, rows: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        logprobs, indices = [], []
        for r in rows:
            lp, ix = self.shard(r // self.shard_rows)
            logprobs.append(torch.from_numpy(np.array(lp[r % self.shard_rows], dtype=np.float32)))
            indices.append(torch.from_numpy(np.array(ix[r % self.shard_rows], dtype=np.int64)))
        return torch.stack(logprobs), torch.stack(indices)


class CachedTeacherCollator(StackCollator):
    """Stacks the cache's fixed-length rows and adds the teacher's top-k arrays of those rows."""

    def __init__(self, cache: TeacherCache):
        super().__init__()
        self.cache = cache

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = super().__call__(features)
        if "row" not in features[0]:  # held-out rows: no teacher needed
            return batch
        logprobs, indices = self.cache.rows([f["row"] for f in features])
        width = batch["input_ids"].shape[1]
        batch["teacher_logprobs"], batch["teacher_indices"] = logprobs[:, :width], indices[:, :width]
        return batch


# ----------------------------------------------------------------------------- fingerprints
def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tokenizer_hash(tokenizer) -> str:
    vocab = json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False).encode()
    specials = json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str).encode()
    return _sha(vocab + specials)


def model_identity(model) -> str:
    """Hash of a loaded model's files: config.json and, per weights file, its name, size and first/last MiB."""
    folder = Path(model.name_or_path)
    if not folder.is_dir():
        from transformers.utils import cached_file

        folder = Path(cached_file(model.name_or_path, "config.json")).parent
    h = hashlib.sha256((folder / "config.json").read_bytes())
    for f in sorted(folder.glob("*.safetensors")):
        size = f.stat().st_size
        h.update(f"{f.name}:{size}".encode())
        with open(f, "rb") as fh:
            h.update(fh.read(2**20))
            fh.seek(max(0, size - 2**20))
            h.update(fh.read(2**20))
    return h.hexdigest()


def data_hash(dataset) -> str:
    h = hashlib.sha256()
    for column in ("input_ids", "labels"):
        for start in range(0, len(dataset), 4096):
            h.update(np.asarray(dataset[start : start + 4096][column], dtype=np.int64).tobytes())
    return h.hexdigest()
