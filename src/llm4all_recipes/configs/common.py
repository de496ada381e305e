"""The argument groups that several stages' recipes share: the training mixture, the run and publishing keys,
the model to load, LoRA, and the output keys of the stages that do not train with a TRL trainer."""

from dataclasses import dataclass
from typing import Literal

from ..fields import DatasetSource, _to_sources, arg


# --------------------------------------------------------------------------- dataset mixture
@dataclass
class MixtureArgs:
    datasets: list[DatasetSource] = arg(
        factory=list,
        help="Training mixture: a list of sources (path, name, split, columns, weight, repeat). Each source is "
        "shuffled (data_seed, else seed) before it is subsampled to its share.",
    )
    eval_datasets: list[DatasetSource] = arg(
        factory=list,
        help="Held-out sets, each used whole and reported under its own name. Never carved out of a "
        "training source: a source listed in both `datasets` and `eval_datasets` is an error.",
    )
    mixture_size: int | None = arg(
        None,
        help="Total size of the training mixture, in rows (chat stages) or tokens (text stages). Default: the "
        "largest total for which every non-repeated source can supply its share.",
    )

    def __post_init__(self):
        self.datasets = _to_sources(self.datasets)
        self.eval_datasets = _to_sources(self.eval_datasets)
        parent = getattr(super(), "__post_init__", None)
        if parent is not None:
            parent()


# --------------------------------------------------------------------------- common keys
@dataclass
class RunArgs:
    overwrite_output_dir: bool = arg(
        False, help="Replace an existing output_dir (and restart an interrupted run) instead of failing."
    )
    dry_run: bool = arg(
        False,
        help="Print the resolved recipe, the token count and the number of steps, then exit (no model).",
    )


@dataclass
class HubArgs:
    """How a stage publishes its output when `push_to_hub: true` (through `hub.publish()`, after the stage)."""

    hub_overwrite: bool = arg(
        False,
        help="Allow pushing to an existing Hub repo / local hub folder (default: refuse, never overwrite silently).",
    )
    hub_target: Literal["auto", "hub", "local"] = arg(
        "auto",
        help="Where push_to_hub publishes: the Hub, the local hub folder (./hub or $LLM4ALL_HUB_DIR), or auto "
        "(the Hub with a token and the network, else the local folder).",
    )
    card_datasets: list[str] = arg(
        factory=list,
        help="Hub dataset ids for the card's `datasets` front matter, besides those found from the recipe's sources "
        "(Hub ids, and local dataset folders that were published): e.g. the Hub copy of local training files.",
    )


@dataclass
class ModelArgs:
    model_name_or_path: str | None = arg(
        None, help="Hub model id, or a local folder such as a previous stage's output_dir."
    )
    model_revision: str | None = arg(None, help="Hub revision (branch, tag or commit) of the model.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = arg(
        "auto", help="Dtype of the loaded weights ('auto' keeps the checkpoint's)."
    )
    attn_implementation: str | None = arg(
        None, help="Attention kernel: eager, sdpa, flash_attention_2 ... (default: transformers' choice)."
    )


@dataclass
class LoraArgs:
    use_peft: bool = arg(False, help="Train LoRA adapters (peft) instead of the full model.")
    lora_r: int = arg(16, help="LoRA rank.")
    lora_alpha: int = arg(32, help="LoRA alpha (scaling = alpha / r).")
    lora_dropout: float = arg(0.05, help="LoRA dropout.")
    lora_target_modules: list[str] | None = arg(None, help="Module names to adapt (default: all linear layers).")
    merge_lora: bool = arg(
        True,
        help="With use_peft: save the merged model at the root of output_dir (loads with plain transformers) "
        "and the adapter under adapter/. If false, only the adapter is saved.",
    )


@dataclass
class StageArgs(RunArgs, HubArgs):
    """Output and publishing keys of the stages that do not train with a TRL trainer."""

    output_dir: str | None = arg(None, help="Default: outputs/<model>/<stage>/<variant>, from the recipe's path.")
    seed: int = arg(42, help="Random seed (sampling, splits).")
    push_to_hub: bool = arg(False, help="Publish the output after the stage (see hub_target).")
    hub_private_repo: bool | None = arg(
        None,
        help="Visibility of the Hub repo. Unset: a new repo is private, an existing one keeps its visibility; "
        "true/false sets it (an existing repo's too).",
    )
