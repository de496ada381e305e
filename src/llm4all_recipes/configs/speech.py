"""Recipe of the transcribe stage: Whisper turns recordings into a dataset in build-dataset's layout."""

import typing
from dataclasses import dataclass
from typing import Literal

from ..errors import RecipeError
from ..fields import arg
from ..paths import check_path
from .checks import _positive, check_hub, check_model, check_output_dir, local_config
from .common import LoraArgs, ModelArgs, StageArgs
from .data import SimsamuArgs, SplitArgs
from .trainer import TrainerArgs


@dataclass
class TranscribeRecipe(ModelArgs, SplitArgs, SimsamuArgs, StageArgs):
    """`llm4all transcribe`: Whisper turns recordings into a dataset (build-dataset's layout) + WER/CER."""

    COLUMNS: typing.ClassVar[tuple[str, ...]] = ()

    source: str | None = arg(
        None,
        help="Recordings: a simsamu-layout folder (<call>/<call>.m4a + optional .rttm/.srt), a .jsonl manifest "
        "(or a folder of them, one split per file) with an `audio` path relative to it and an optional `text` "
        "reference, a save_to_disk dataset with an `audio` column, or a Hub dataset id (snapshot_download).",
    )
    task: Literal["dialogue", "summary", "transcript"] = arg(
        "dialogue",
        help="simsamu layout: the rows built from the ASR text, as build-dataset's tasks (dialogue: the call as a "
        "chat, regulator = assistant; summary: transcript -> fiche; transcript: speaker-named text). dialogue and "
        "summary need speaker turns (an RTTM): calls without one are counted and left out.",
    )
    language: str = arg("fr", help="Whisper language token (a code such as fr, or a name such as french).")
    timestamps: bool = arg(
        True,
        help="Recordings without turns (manifests, calls without RTTM/SRT): long-form with timestamps (segments). "
        "false: a recording that fits one window is transcribed as one clip, batched, without timestamps (for "
        "models trained without them); longer ones stay long-form.",
    )
    batch_size: int = arg(8, help="Segments per generate() call (sorted by length).")
    num_beams: int = arg(1, help="Beam size (1: greedy, Whisper's default).")
    max_new_tokens: int = arg(128, help="Tokens generated per segment (Whisper windows hold at most 448).")
    shard_size: int = arg(
        8,
        help="Recordings per shard: each finished shard is saved in <output_dir>.tmp, so an interrupted run "
        "resumes at the first unfinished one.",
    )
    device: str = arg("auto", help="auto (cuda when available), cpu, cuda, cuda:1 ...")

    def check(self, static: bool) -> None:
        check_model(self.model_name_or_path, static, "the Whisper checkpoint")
        if not self.source:
            raise RecipeError("required: a simsamu-layout folder, an audio manifest or a Hub dataset id", key="source")
        check_path(self.source, "source", static, hub_ok=True)
        from transformers.models.whisper.tokenization_whisper import LANGUAGES, TO_LANGUAGE_CODE

        if self.language.lower() not in LANGUAGES and self.language.lower() not in TO_LANGUAGE_CODE:
            raise RecipeError(f"not a Whisper language: {self.language!r} (e.g. fr, french)", key="language")
        _positive(self, "batch_size", "num_beams", "max_new_tokens", "shard_size")
        if self.max_new_tokens > 440:
            raise RecipeError("must be <= 440 (Whisper's 448-token window minus its prompt)", key="max_new_tokens")
        self.check_splits()
        if self.per_turn and self.task != "dialogue":
            raise RecipeError("per_turn applies to task: dialogue", key="per_turn")
        if self.summaries:
            check_path(self.summaries, "summaries", static)
        check_output_dir(self, static)
        check_hub(self.push_to_hub, self.hub_dataset_id, "hub_dataset_id")


SPEECH_TASKS = ("transcription", "next_turn", "fiche")
DEFAULT_PROMPTS = {
    "transcription": "Transcris mot à mot cet extrait d'appel au SAMU.",
    "next_turn": "Voici ce que vient de dire l'appelant. Réponds comme le médecin régulateur.",
    "fiche": "Écris la fiche de régulation de cet appel.",
}


@dataclass
class SpeechSFTRecipe(ModelArgs, LoraArgs, SplitArgs, TrainerArgs):
    """`llm4all speech-sft`: trains a speech-text model (Whisper encoder + projector + causal LM) on audio + text."""

    COLUMNS: typing.ClassVar[tuple[str, ...]] = ()

    audio_encoder: str | None = arg(
        None,
        help="A Whisper checkpoint (Hub id or folder): model_name_or_path is then a causal LM, and the two are "
        "assembled with a new projector (as `tiny-model` assembles a speech-llm). Without it, model_name_or_path "
        "is a speech-llm checkpoint (e.g. the projector-only stage's output).",
    )
    stack_factor: int = arg(4, help="With audio_encoder: encoder frames stacked into one LM position (20 ms each).")
    projector_hidden_size: int | None = arg(
        None, help="With audio_encoder: the projector MLP's hidden size (default: the LM's hidden size)."
    )
    source: str | None = arg(
        None,
        help="Recordings, read as `transcribe` reads them: a simsamu-layout folder (<call>/<call>.m4a + .rttm + "
        ".srt), a .jsonl manifest (or a folder of them, one split per file: `audio` path + `text`), a "
        "save_to_disk dataset with an `audio` column, or a Hub dataset id.",
    )
    tasks: list[str] = arg(
        factory=lambda: ["transcription"],
        help="Rows built from the source: transcription (each turn's audio -> its reference text; manifests: audio "
        "-> text), next_turn (a caller's turn -> the regulator's next turn), fiche (a whole call -> its summary from "
        "`summaries`). simsamu calls are split by situation (`splits`), as build-dataset and transcribe split them.",
    )
    prompts: dict[str, str] = arg(
        factory=lambda: dict(DEFAULT_PROMPTS),
        help="The instruction that follows the audio in the user turn, per task (French defaults).",
    )
    skip_speakers: list[str] = arg(
        factory=lambda: ["inintelligible"], help="simsamu: speaker labels skipped (and counted) instead of an error."
    )
    summaries: str | None = arg(
        None, help="task fiche: jsonl of {id, summary}; default summaries.jsonl at the source root."
    )
    validation_split: str = arg(
        "validation",
        help="The split whose loss is measured (keep_best chooses on it): simsamu's split name, or a manifest "
        "file's stem (e.g. eval for eval.jsonl).",
    )
    max_audio_seconds: float = arg(
        60.0, help="Rows whose audio is longer are left out (counted): whole calls need it raised for task fiche."
    )
    trainable: Literal["projector", "projector+lora"] = arg(
        "projector",
        help="projector: the projector only (encoder and LM frozen: the first stage of Ultravox / LLaMA-Omni "
        "recipes); projector+lora: the projector and LoRA adapters on the LM's linear layers (lora_* keys), merged "
        "into the saved model.",
    )
    keep_best: bool = arg(
        True,
        help="Evaluate the held-out loss on the `validation` split every eval_steps (default: save_steps), keep the "
        "best checkpoint, and write the starting model unchanged if no step beats it.",
    )

    def __post_init__(self):
        self.use_peft = self.trainable == "projector+lora"
        if self.keep_best:
            self.eval_strategy = self.save_strategy = "steps"
            self.eval_steps = self.eval_steps or self.save_steps
            self.load_best_model_at_end, self.greater_is_better = True, False
            self.metric_for_best_model = "eval_validation_loss"
        self.remove_unused_columns = False  # the collator reads the audio columns
        super().__post_init__()

    def check_data(self, static: bool) -> None:
        for key in ("datasets", "eval_datasets"):
            if getattr(self, key):
                raise RecipeError("speech-sft reads its rows from `source` (audio + text): remove it", key=key)
        if not self.source:
            raise RecipeError("required: a simsamu-layout folder, an audio manifest or a Hub dataset id", key="source")
        check_path(self.source, "source", static, hub_ok=True)
        if not self.tasks or any(t not in SPEECH_TASKS for t in self.tasks):
            raise RecipeError(f"a non-empty list of {', '.join(SPEECH_TASKS)}; got {self.tasks}", key="tasks")
        for task in self.tasks:
            if not self.prompts.get(task, "").strip():
                raise RecipeError(f"no instruction for task {task}", key=f"prompts.{task}")
        if self.summaries:
            check_path(self.summaries, "summaries", static)

    def check(self, static: bool) -> None:
        check_model(self.model_name_or_path, static, "a speech-llm checkpoint, or a causal LM with audio_encoder")
        if self.audio_encoder:
            check_model(self.audio_encoder, static, "a Whisper checkpoint", key="audio_encoder")
        _check_speech_models(self.model_name_or_path, self.audio_encoder)
        super().check(static)
        self.check_splits()
        _positive(self, "stack_factor", "max_audio_seconds")
        if self.use_peft:
            _positive(self, "lora_r", "lora_alpha")


def _check_speech_models(model: str, audio_encoder: str | None) -> None:
    """One line, from the configs alone (local folders; a Hub id is checked when it loads), when the checkpoints
    cannot make a speech-text model."""
    from ..models import model_kind

    kind = model_kind(model) if local_config(model) is not None else None
    if audio_encoder:
        if kind == "speech-llm":
            raise RecipeError(f"{model} is already a speech-llm: drop audio_encoder", key="audio_encoder")
        if kind is not None and local_config(audio_encoder) is not None:
            from ..speech.assembly import check_parts

            check_parts(audio_encoder, model, "audio_encoder", "model_name_or_path")
        return
    if kind == "text":
        raise RecipeError(
            f"{model} is a text-only model: give audio_encoder (a Whisper) to assemble a speech-text model with it, "
            "or start from a speech-llm checkpoint",
            key="model_name_or_path",
        )
    if kind == "speech":
        raise RecipeError(
            f"{model} is an audio-only model (speech recognition): give it as audio_encoder and a causal LM as "
            "model_name_or_path, or start from a speech-llm checkpoint",
            key="model_name_or_path",
        )
