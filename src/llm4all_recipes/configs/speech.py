"""Recipe of the transcribe stage: Whisper turns recordings into a dataset in build-dataset's layout."""

import typing
from dataclasses import dataclass
from typing import Literal

from ..errors import RecipeError
from ..fields import arg
from ..paths import check_path
from .checks import _positive, check_hub, check_model, check_output_dir
from .common import ModelArgs, StageArgs
from .data import SimsamuArgs, SplitArgs


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
