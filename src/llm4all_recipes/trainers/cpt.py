"""Continued pretraining with forgetting control: next-token cross-entropy on every token, plus an optional
KL to the model before continued pretraining on the tokens flagged by `kl_mask` (replay tokens, or all):

    loss = CE + kl_coef · τ² · D(p_ref ‖ p_model)       (D as in trainers/losses.py, forward KL by default)

kl_coef may follow a linear schedule from `kl_coef` at the first step to `kl_coef_end` at the last.

Rows are fixed-length blocks packed per source (new data and replay never share a block), so a per-row flag
is a per-token source mask that survives packing. The reference model is handled like KDTrainer's teacher.
"""

import torch

from .kd import KDTrainer
from .losses import cross_entropy, distillation_loss


class CPTTrainer(KDTrainer):
    def __init__(self, *args, kl_coef: float = 0.0, kl_coef_end: float | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.kl_coef, self.kl_coef_end = kl_coef, kl_coef_end

    def current_kl_coef(self) -> float:
        """kl_coef at this step: constant, or linear from kl_coef (first step) to kl_coef_end (last step)."""
        if self.kl_coef_end is None:
            return self.kl_coef
        progress = self.state.global_step / max(1, self.state.max_steps - 1)
        return self.kl_coef + (self.kl_coef_end - self.kl_coef) * min(1.0, progress)

    def loss_terms(self, model, inputs, num_items_in_batch=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(cross-entropy, KL to the reference) of one batch, both normalised by the trained tokens."""
        kl_mask = inputs.pop("kl_mask")
        labels = inputs["labels"]
        forward = {k: v for k, v in inputs.items() if k != "labels"}
        forward["use_cache"] = False
        logits = model(**forward).logits[:, :-1, : self.vocab_size]
        targets = labels[:, 1:]
        mask = targets != -100
        ce = cross_entropy(logits, targets, mask, num_items_in_batch)
        kl_positions = kl_mask[:, 1:].bool() & mask
        if self.teacher is None or not kl_positions.any():
            return ce, torch.zeros_like(ce)
        with torch.no_grad():
            reference = self.teacher(**forward).logits[:, :-1, : self.vocab_size]
        kl = distillation_loss(
            logits,
            kl_positions,
            teacher_logits=reference,
            loss=self.kd["loss"],
            beta=self.kd["beta"],
            temperature=self.kd["temperature"],
            num_items=num_items_in_batch,
        )
        return ce, kl

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not model.training:
            return self.held_out_loss(model, inputs, return_outputs)
        mode = "train"
        ce, kl = self.loss_terms(model, inputs, num_items_in_batch)
        coef = self.current_kl_coef()
        loss = ce + coef * kl
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes
        self._metrics[mode]["ce"].append(float(ce.detach()))
        self._metrics[mode]["kl"].append(float(kl.detach()))
        if self.kl_coef_end is not None:
            self._metrics[mode]["kl_coef"].append(coef)
        self._total_train_tokens += self.accelerator.gather_for_metrics(inputs["attention_mask"].sum()).sum().item()
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
        return (loss, None) if return_outputs else loss
