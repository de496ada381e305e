"""Speech-text models of llm4all-recipes ("LLM voix+texte"): a Whisper encoder hears the audio, a projector (frame
stacking + MLP) maps its frames into a causal LM's embedding space, and the causal LM reads them in place of the
audio placeholder tokens of its prompt, then writes text.

This file is self-contained (torch + transformers only): it is copied into every speech-text checkpoint as
`modeling_llm4all_speech_llm.py`, so that plain transformers loads it without llm4all-recipes installed:

    from transformers import AutoModel, AutoProcessor
    model = AutoModel.from_pretrained(path, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(path, trust_remote_code=True)
    messages = [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "Transcris."}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(text=prompt, audio=[samples_16khz], return_tensors="pt")
    new_tokens = model.generate(**inputs, max_new_tokens=64)   # the answer's tokens only (the LM reads embeddings)
    print(processor.batch_decode(new_tokens, skip_special_tokens=True)[0])

The checkpoint's config.json has `model_type: llm4all_speech_llm`, the encoder's Whisper config under
`whisper_config`, the LM's config under `lm_config`, the projector's shape (`stack_factor`, `projector_hidden_size`)
and the placeholder's id (`audio_token_id`). Audio longer than the encoder's window (Whisper's 30 s) is cut into
windows, each encoded alone, their frames concatenated: one placeholder in the text stands for the whole audio.
"""

import contextlib
import math
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel
from transformers.processing_utils import ProcessorMixin

MODEL_TYPE = "llm4all_speech_llm"
MODELING_FILE = "modeling_llm4all_speech_llm.py"
AUDIO_TOKEN = "<|audio|>"
AUTO_MAP = {
    "AutoConfig": "modeling_llm4all_speech_llm.SpeechLLMConfig",
    "AutoModel": "modeling_llm4all_speech_llm.SpeechLLMForConditionalGeneration",
}
PROCESSOR_AUTO_MAP = {"AutoProcessor": "modeling_llm4all_speech_llm.SpeechLLMProcessor"}
WINDOW_SECONDS = 30  # Whisper's encoder reads 30 s windows (3,000 mel frames, 1,500 encoder frames)


def audio_token_count(mel_frames: int, stack_factor: int) -> int:
    """Placeholder tokens for a window with `mel_frames` real mel frames: Whisper's encoder halves the frame rate
    (its second convolution has stride 2), the projector stacks `stack_factor` frames into one token."""
    return math.ceil(math.ceil(mel_frames / 2) / stack_factor)


class SpeechLLMConfig(PretrainedConfig):
    """whisper_config: a WhisperConfig as a dict (its encoder is used); lm_config: a causal LM's config as a dict."""

    model_type = MODEL_TYPE

    def __init__(
        self,
        whisper_config: dict | None = None,
        lm_config: dict | None = None,
        stack_factor: int = 4,
        projector_hidden_size: int | None = None,
        audio_token_id: int | None = None,
        **kwargs,
    ):
        self.whisper_config = dict(whisper_config or {})
        self.lm_config = dict(lm_config or {})
        self.stack_factor = stack_factor
        self.projector_hidden_size = projector_hidden_size
        self.audio_token_id = audio_token_id
        super().__init__(**kwargs)

    def audio(self) -> PretrainedConfig:
        values = dict(self.whisper_config)
        return AutoConfig.for_model(values.pop("model_type"), **values)

    def text(self) -> PretrainedConfig:
        values = dict(self.lm_config)
        return AutoConfig.for_model(values.pop("model_type"), **values)

    def get_text_config(self, *args, **kwargs) -> PretrainedConfig:
        """The LM's config: what transformers reads for generation defaults (stop and pad tokens)."""
        return self.text()


class Projector(nn.Module):
    """Stack `k` consecutive encoder frames (d -> k*d, k times fewer), normalise, then a two-layer MLP to the LM's
    hidden size."""

    def __init__(self, audio_size: int, text_size: int, stack_factor: int, hidden_size: int | None = None):
        super().__init__()
        self.stack_factor = stack_factor
        hidden_size = hidden_size or text_size
        self.norm = nn.LayerNorm(audio_size * stack_factor)
        self.linear_1 = nn.Linear(audio_size * stack_factor, hidden_size)
        self.act = nn.GELU()
        self.linear_2 = nn.Linear(hidden_size, text_size)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        batch, length, size = frames.shape
        pad = -length % self.stack_factor
        if pad:
            frames = nn.functional.pad(frames, (0, 0, 0, pad))
        stacked = frames.reshape(batch, (length + pad) // self.stack_factor, size * self.stack_factor)
        return self.linear_2(self.act(self.linear_1(self.norm(stacked))))


def _encoder_class(whisper_config: PretrainedConfig):
    if whisper_config.model_type != "whisper":
        raise ValueError(f"speech-llm: the audio encoder must be a Whisper encoder, got {whisper_config.model_type!r}")
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    return WhisperEncoder


class SpeechLLMForConditionalGeneration(PreTrainedModel):
    """audio_encoder (Whisper's) -> projector -> language_model (any causal LM), trained end to end or in parts."""

    config_class = SpeechLLMConfig
    base_model_prefix = ""
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _supports_sdpa = True

    def __init__(self, config: SpeechLLMConfig):
        super().__init__(config)
        audio, text = config.audio(), config.text()
        self.audio_encoder = _encoder_class(audio)(audio)
        self.projector = Projector(audio.d_model, text.hidden_size, config.stack_factor, config.projector_hidden_size)
        self.language_model = AutoModelForCausalLM.from_config(text)
        tied = getattr(self.language_model, "_tied_weights_keys", None)
        if isinstance(tied, dict):  # transformers >= 5: {target: source}, named from the root
            self._tied_weights_keys = {f"language_model.{k}": f"language_model.{v}" for k, v in tied.items()}
        self.post_init()

    def _init_weights(self, module):
        if module is self.projector or isinstance(module, Projector):
            return  # initialised by nn.Linear / nn.LayerNorm themselves (see from_parts)
        std = getattr(self.config.text(), "initializer_range", 0.02)
        if isinstance(module, nn.Linear):
            module.weight.data.normal_(0.0, std)
            if module.bias is not None:
                module.bias.data.zero_()

    @classmethod
    def from_parts(cls, whisper, language_model, audio_token_id: int, stack_factor: int = 4, hidden: int | None = None):
        """Assemble a model from a loaded Whisper (its encoder is kept) and a loaded causal LM (whose embeddings
        already hold the placeholder token); the projector is freshly initialised (seeded by the caller)."""
        config = SpeechLLMConfig(
            whisper_config=whisper.config.to_dict(),
            lm_config=language_model.config.to_dict(),
            stack_factor=stack_factor,
            projector_hidden_size=hidden,
            audio_token_id=audio_token_id,
        )
        for values in (config.whisper_config, config.lm_config):
            for key in ("architectures", "auto_map", "transformers_version", "_name_or_path"):
                values.pop(key, None)
        with torch.device("meta"):
            model = cls(config)
        model.audio_encoder = whisper.get_encoder()
        model.language_model = language_model
        dtype = next(language_model.parameters()).dtype
        model.projector = Projector(whisper.config.d_model, language_model.config.hidden_size, stack_factor, hidden).to(
            dtype
        )
        return model

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """transformers' load, then the LM's generation config (stop tokens, lengths) from generation_config.json."""
        from transformers import GenerationConfig

        model = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        hub = {k: kwargs[k] for k in ("revision", "cache_dir", "token", "local_files_only") if k in kwargs}
        with contextlib.suppress(OSError):  # none saved: the LM's defaults from its config
            model.language_model.generation_config = GenerationConfig.from_pretrained(
                pretrained_model_name_or_path, **hub
            )
        return model

    def get_input_embeddings(self):
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.language_model.get_output_embeddings()

    def audio_embeddings(self, input_features: torch.Tensor, feature_attention_mask: torch.Tensor | None = None):
        """(placeholder count, LM hidden size): every window's projected frames, cut to its real length, in order."""
        frames = self.audio_encoder(input_features.to(self.projector.linear_1.weight.dtype)).last_hidden_state
        projected = self.projector(frames)
        if feature_attention_mask is None:
            return projected.reshape(-1, projected.shape[-1])
        counts = [audio_token_count(int(n), self.config.stack_factor) for n in feature_attention_mask.sum(-1)]
        return torch.cat([window[:n] for window, n in zip(projected, counts)])

    def embed(self, input_ids, input_features=None, feature_attention_mask=None) -> torch.Tensor:
        """The LM's input embeddings with the audio frames in place of the placeholder tokens."""
        embeds = self.get_input_embeddings()(input_ids)
        slots = input_ids == self.config.audio_token_id
        if input_features is None:
            if slots.any():
                raise ValueError(f"the text holds {int(slots.sum())} audio placeholder tokens but no audio was given")
            return embeds
        audio = self.audio_embeddings(input_features, feature_attention_mask)
        if int(slots.sum()) != audio.shape[0]:
            raise ValueError(
                f"the text holds {int(slots.sum())} audio placeholder tokens, the audio gives {audio.shape[0]} "
                "frames: build the inputs with the model's processor"
            )
        return embeds.masked_scatter(slots.unsqueeze(-1), audio.to(embeds.dtype))

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        input_features=None,
        feature_attention_mask=None,
        labels=None,
        inputs_embeds=None,
        **kwargs,
    ):
        if inputs_embeds is None:
            inputs_embeds = self.embed(input_ids, input_features, feature_attention_mask)
        return self.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, labels=labels, **kwargs)

    @torch.no_grad()
    def generate(self, input_ids=None, input_features=None, feature_attention_mask=None, attention_mask=None, **kw):
        """The LM's generate on the prompt's embeddings (audio in place): returns the new tokens only."""
        embeds = self.embed(input_ids, input_features, feature_attention_mask)
        return self.language_model.generate(inputs_embeds=embeds, attention_mask=attention_mask, **kw)

    def save_pretrained(self, save_directory, *args, is_main_process: bool = True, **kwargs):
        """transformers' save, then this format's auto_map and code (loadable with trust_remote_code)."""
        self.config.auto_map = dict(AUTO_MAP)
        self.config.architectures = [type(self).__name__]
        super().save_pretrained(save_directory, *args, is_main_process=is_main_process, **kwargs)
        if is_main_process:
            self.language_model.generation_config.save_pretrained(save_directory)
            shutil.copyfile(__file__, os.path.join(save_directory, MODELING_FILE))


class SpeechLLMProcessor(ProcessorMixin):
    """Whisper's feature extractor + the LM's tokenizer (with the placeholder token). `text` holds one placeholder
    per audio, in order; each is expanded to as many placeholders as the audio gives frames after the projector."""

    def __init__(self, feature_extractor=None, tokenizer=None, audio_token: str = AUDIO_TOKEN, stack_factor: int = 4):
        self.audio_token, self.stack_factor = audio_token, stack_factor
        super().__init__(feature_extractor, tokenizer)

    @property
    def audio_token_id(self) -> int:
        return self.tokenizer.convert_tokens_to_ids(self.audio_token)

    def windows(self, samples) -> list[np.ndarray]:
        rate = self.feature_extractor.sampling_rate
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        step = int(getattr(self.feature_extractor, "chunk_length", WINDOW_SECONDS) * rate)  # the encoder's window
        return [samples[i : i + step] for i in range(0, max(len(samples), 1), step)]

    def __call__(self, text=None, audio=None, return_tensors="pt", padding=True, **kwargs):
        texts = [text] if isinstance(text, str) else list(text)
        audio = [] if audio is None else audio
        audio = [audio] if isinstance(audio, np.ndarray) and audio.ndim == 1 else list(audio)
        found = sum(t.count(self.audio_token) for t in texts)
        if found != len(audio):
            raise ValueError(f"the text holds {found} {self.audio_token} placeholders for {len(audio)} audios")
        out, replacements = {}, []
        if audio:
            windows = [self.windows(a) for a in audio]
            features = self.feature_extractor(
                [w for ws in windows for w in ws],
                sampling_rate=self.feature_extractor.sampling_rate,
                return_attention_mask=True,
                padding="max_length",
                return_tensors="pt",
            )
            out["input_features"] = features["input_features"]
            out["feature_attention_mask"] = features["attention_mask"]
            frames = iter(int(n) for n in features["attention_mask"].sum(-1))
            for ws in windows:
                count = sum(audio_token_count(next(frames), self.stack_factor) for _ in ws)
                replacements.append(self.audio_token * count)
        expanded, queue = [], iter(replacements)
        for t in texts:
            parts = t.split(self.audio_token)
            expanded.append(parts[0] + "".join(next(queue) + p for p in parts[1:]))
        tokens = self.tokenizer(
            expanded, return_tensors=return_tensors, padding=padding, add_special_tokens=False, **kwargs
        )
        return {**tokens, **out}

    def apply_chat_template(self, conversation, add_generation_prompt: bool = False, tokenize: bool = False, **kwargs):
        """The LM's own chat template, a content list's `{"type": "audio"}` parts written as the placeholder."""

        def flat(content):
            if isinstance(content, str):
                return content
            return "".join(self.audio_token if p.get("type") == "audio" else p.get("text", "") for p in content)

        messages = [{**m, "content": flat(m["content"])} for m in conversation]
        return self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=add_generation_prompt, tokenize=tokenize, **kwargs
        )

    def batch_decode(self, *args, **kwargs):
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs):
        return self.tokenizer.decode(*args, **kwargs)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """transformers' save, then the auto_map that lets AutoProcessor find this class (trust_remote_code)."""
        import json

        result = super().save_pretrained(save_directory, *args, **kwargs)
        path = os.path.join(save_directory, "processor_config.json")
        config = json.loads(Path(path).read_text(encoding="utf-8")) if os.path.isfile(path) else {}
        config.update(auto_map=PROCESSOR_AUTO_MAP, processor_class=type(self).__name__)
        config.update(audio_token=self.audio_token, stack_factor=self.stack_factor)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2)
        if not os.path.isfile(os.path.join(save_directory, MODELING_FILE)):
            shutil.copyfile(__file__, os.path.join(save_directory, MODELING_FILE))
        return result


if __name__.startswith("llm4all_recipes"):  # inside the package: plain Auto* calls, no remote code
    from transformers import AutoModel, AutoProcessor

    AutoConfig.register(MODEL_TYPE, SpeechLLMConfig, exist_ok=True)
    AutoModel.register(SpeechLLMConfig, SpeechLLMForConditionalGeneration, exist_ok=True)
    AutoProcessor.register(SpeechLLMConfig, SpeechLLMProcessor, exist_ok=True)
