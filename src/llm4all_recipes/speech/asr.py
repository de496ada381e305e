"""Whisper inference: clips in batches (segments of a diarised call), whole recordings long-form with timestamps.

Both go through transformers' `WhisperForConditionalGeneration.generate` (language and task tokens, timestamp
rules, and for audio over 30 s the sequential long-form algorithm with its temperature fallback off), with the
processor's log-mel features. Clips are sorted by length so a batch pads little; clips longer than the model's
window (30 s for every published Whisper: the feature extractor's `n_samples`), which it would cut, are
transcribed long-form one by one.
"""

from collections.abc import Callable, Sequence

import numpy as np
import torch

from .audio import SAMPLING_RATE


class Transcriber:
    """A Whisper model + processor on a device, with the generation settings of a recipe."""

    def __init__(self, model, processor, *, language: str, device: str, num_beams: int = 1, max_new_tokens: int = 128):
        self.model, self.processor = model.to(device).eval(), processor
        self.device, self.dtype = torch.device(device), next(model.parameters()).dtype
        self.window = processor.feature_extractor.n_samples  # samples of one input window
        self.kwargs = {
            "language": language,
            "task": "transcribe",
            "num_beams": num_beams,
            "max_new_tokens": max_new_tokens,
        }

    def _features(self, clips: Sequence[np.ndarray], long: bool = False):
        extra = {"truncation": False, "padding": "longest"} if long else {}
        out = self.processor.feature_extractor(
            list(clips), sampling_rate=SAMPLING_RATE, return_tensors="pt", return_attention_mask=True, **extra
        )
        return {k: v.to(self.device, self.dtype if v.is_floating_point() else v.dtype) for k, v in out.items()}

    @torch.no_grad()
    def clips(
        self, clips: Sequence[np.ndarray], batch_size: int, progress: Callable[[int], None] | None = None
    ) -> list[str]:
        """The text of each clip (same order)."""
        texts: list[str] = [""] * len(clips)
        short = [i for i, c in enumerate(clips) if len(c) <= self.window]
        for i in (i for i in range(len(clips)) if len(clips[i]) > self.window):
            texts[i] = " ".join(s["text"] for s in self.long_form(clips[i])).strip()
            if progress:
                progress(1)
        short.sort(key=lambda i: len(clips[i]))
        for start in range(0, len(short), batch_size):
            batch = short[start : start + batch_size]
            features = self._features([clips[i] for i in batch])
            ids = self.model.generate(
                features["input_features"], attention_mask=features["attention_mask"], **self.kwargs
            )
            for i, text in zip(batch, self.processor.batch_decode(ids, skip_special_tokens=True)):
                texts[i] = text.strip()
            if progress:
                progress(len(batch))
        return texts

    @torch.no_grad()
    def long_form(self, audio: np.ndarray) -> list[dict]:
        """[{start, end, text}] segments of a whole recording (timestamps in seconds)."""
        long = len(audio) > self.window
        features = self._features([audio], long=long)
        duration = round(len(audio) / SAMPLING_RATE, 2)
        # one window: one generate pass (short-form); longer: the attention mask marks the audio's end and
        # transformers runs Whisper's sequential long-form decoding, window after window
        mask = {"attention_mask": features["attention_mask"]} if long else {}
        out = self.model.generate(
            features["input_features"], return_timestamps=True, return_segments=True, **mask, **self.kwargs
        )
        segments = out["segments"][0] if isinstance(out, dict) and "segments" in out else None
        if not segments:  # nothing timestamped: the decoded text as one segment
            ids = out["sequences"] if isinstance(out, dict) else out
            text = self.processor.batch_decode(ids, skip_special_tokens=True)[0].strip()
            return [{"start": 0.0, "end": duration, "text": text}] if text else []
        result = []
        for seg in segments:  # timestamps clipped to the audio (a model may predict past its end)
            text = self.processor.decode(seg["tokens"], skip_special_tokens=True).strip()
            start = min(round(float(seg["start"]), 2), duration)
            if text:
                result.append(
                    {"start": start, "end": max(start, min(round(float(seg["end"]), 2), duration)), "text": text}
                )
        return result
