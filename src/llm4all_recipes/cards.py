"""Model and dataset cards, rendered from the Jinja templates in model_cards/ and dataset_cards/ through
huggingface_hub's `ModelCard` / `DatasetCard` (front matter with `base_model`, `datasets`, `model-index`).

The templates' source is the repository's model_cards/ and dataset_cards/; the package reaches them through
links in data/cards/, which a wheel (`pip install .`) turns into copies, so an installed package renders cards.
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .paths import PACKAGE_DIR, is_hub_id

MODEL_CARD_TEMPLATE = PACKAGE_DIR / "data" / "cards" / "model_card.md"
DATASET_CARD_TEMPLATE = PACKAGE_DIR / "data" / "cards" / "dataset_card.md"


@dataclass
class CardInfo:
    """What a stage says in its model card (the rest, lineage and front matter, comes from the run files)."""

    summary: str
    training: str  # the markdown of the Training section
    model_name: str | None = None  # default: the recipe's hub_model_id, else its output folder's name
    results: list[dict[str, Any]] = field(default_factory=list)  # result() rows
    data_report: list[dict[str, Any]] | None = None
    datasets: list[str] | None = None  # Hub ids; default: from the recipe's sources
    tags: list[str] | None = None
    license: str | None = None
    language: list[str] | str | None = None
    chat: bool = False
    limitations: str = ""
    load_kwargs: str = ""  # set by outputs.finish from the saved config
    speech: bool = False  # a speech-to-text model (Whisper): set by outputs.finish from the saved config
    speech_llm: bool = False  # a speech-text model (audio + chat in, text out): set by outputs.finish
    speech_prompt: str = "Transcris mot à mot cet extrait d'appel au SAMU."  # its snippet's instruction


def parent_card_data(model_path: str | None) -> dict[str, Any]:
    """Front matter of the parent model's card (local folder), to inherit its licence and language."""
    if not model_path:
        return {}
    readme = Path(model_path) / "README.md"
    if not readme.is_file():
        return {}
    from huggingface_hub import ModelCard

    return ModelCard.load(readme).data.to_dict()


def dataset_repo_ids(paths: list[str], extra: list[str] | None = None) -> list[str]:
    """Hub ids of training data: Hub ids as they are, local dataset folders by the repo they were published to."""
    out = list(extra or [])
    for path in paths:
        lineage = Path(path) / "lineage.json"
        if lineage.is_file():
            import json

            repo = json.loads(lineage.read_text(encoding="utf-8"))["stages"][-1].get("hub_repo_id")
            if repo:
                out.append(repo)
        elif is_hub_id(path):
            out.append(path)
    return list(dict.fromkeys(out))


def dataset_id(path: str) -> str:
    """How a card names a dataset: its Hub id (a local folder: the repo it was published to), else the local
    file or folder's name with its folder's (en/validation and fr/validation stay two datasets of the
    model-index; no machine path)."""
    ids = dataset_repo_ids([path])
    if ids:
        return ids[0]
    local = Path(path)
    return f"{local.parent.name}/{local.stem}" if local.parent.name else local.stem


def result(
    name: str, metric: str, value: float, *, dataset: str | None = None, split: str | None = None, **args: Any
) -> dict[str, Any]:
    """One evaluation result (a model-index entry and a row of the card's Evaluation table); `args` say what it
    was computed on (tokens, samples, window)."""
    return {
        "dataset_name": name,
        "dataset_type": dataset or name,
        "dataset_split": split,
        "metric_type": metric,
        "metric_value": float(value),
        "metric_args": args or None,
    }


def perplexity_results(evals: dict[str, dict], sources: list[Any], window: int | None = None) -> list[dict]:
    """Results of held-out perplexity ({label: {perplexity, tokens}}), named after their sources (by label)."""
    by_label = {s.tag: s for s in sources}
    rows = []
    for label, values in evals.items():
        src = by_label.get(label)
        rows.append(
            result(
                label,
                "perplexity",
                values["perplexity"],
                dataset=dataset_id(src.path) if src else None,
                split=src.split if src else None,
                tokens=values.get("tokens"),
                window=window,
            )
        )
    return rows


def eval_result(r: dict[str, Any]):
    """huggingface_hub's EvalResult of a `result()` row."""
    from huggingface_hub import EvalResult

    args = {k: v for k, v in (r.get("metric_args") or {}).items() if v is not None}
    return EvalResult(
        task_type="text-generation",
        dataset_type=r.get("dataset_type") or r["dataset_name"],
        dataset_name=r["dataset_name"],
        dataset_split=r.get("dataset_split"),
        metric_type=r["metric_type"],
        metric_value=float(r["metric_value"]),
        metric_args=args or None,
    )


def results_table(results: list[dict[str, Any]]) -> str:
    """The card's Evaluation table: set, split, metric, value, and what it was computed on."""
    lines = ["| set | dataset | split | metric | value | on |", "|---|---|---|---|---:|---|"]
    for r in results:
        on = ", ".join(
            f"{v:,} {k}" if isinstance(v, int) else f"{k} {v}"
            for k, v in (r.get("metric_args") or {}).items()
            if v is not None
        )
        lines.append(
            f"| {r['dataset_name']} | {r.get('dataset_type') or r['dataset_name']} | "
            f"{r.get('dataset_split') or ''} | {r['metric_type']} | {r['metric_value']:.4g} | {on} |"
        )
    return "\n".join(lines)


def model_ref(path: str | None) -> str:
    """How a published card names a model: its Hub id (a local folder: the repo it was published to, from its
    lineage), else "a local model" with the folder's name — never a machine path."""
    if not path:
        return "-"
    if is_hub_id(path):
        return f"`{path}`"
    repos = dataset_repo_ids([path])
    return f"`{repos[0]}`" if repos else f"a local model (`{Path(path).name}`)"


def base_model_repo(lineage: list[dict[str, Any]]) -> str | None:
    """The parent stage's Hub repo: its hub_model_id, or the Hub id it started from."""
    if len(lineage) < 2:
        return None
    parent = lineage[-2]
    if parent.get("hub_repo_id"):
        return parent["hub_repo_id"]
    model = parent.get("model")
    return model if model and is_hub_id(model) else None


def render_model_card(
    *,
    stage: str,
    model_name: str,
    summary: str,
    training: str,
    lineage: list[dict[str, Any]],
    results: list[dict[str, Any]] | None = None,
    data_report: list[dict[str, Any]] | None = None,
    datasets: list[str] | None = None,
    parent: str | None = None,
    tags: list[str] | None = None,
    license: str | None = None,
    language: list[str] | str | None = None,
    chat: bool = False,
    limitations: str = "",
    load_kwargs: str = "",
    speech: bool = False,
    speech_llm: bool = False,
    speech_prompt: str = "",
) -> str:
    """Markdown of a model card; `results` rows are {dataset_name, metric_type, metric_value}; `datasets` are
    Hub ids (see dataset_repo_ids)."""
    from huggingface_hub import ModelCard, ModelCardData

    inherited = parent_card_data(parent)
    base_model = base_model_repo(lineage)
    repo_id = lineage[-1].get("hub_repo_id") or lineage[-1].get("output_dir") or model_name
    eval_results = [eval_result(r) for r in results or []]
    card_data = ModelCardData(
        model_name=model_name,
        base_model=base_model,
        datasets=datasets or None,
        license=license or inherited.get("license"),
        language=language or inherited.get("language"),
        library_name="transformers",
        pipeline_tag="audio-text-to-text"
        if speech_llm
        else "automatic-speech-recognition"
        if speech
        else "text-generation",
        tags=sorted({"llm4all", f"llm4all-{stage}", *(tags or [])}),
        eval_results=eval_results or None,
    )
    rows = []
    for s in lineage:
        row = dict(s)
        if s.get("recipe"):
            row["recipe_yaml"] = yaml.safe_dump(s["recipe"], sort_keys=False, allow_unicode=True).rstrip()
            row["versions_line"] = ", ".join(f"{k} {v}" for k, v in s.get("versions", {}).items())
        rows.append(row)
    report = [
        {
            "source": r["source"],
            "split": r["split"],
            "used": r.get("used_tokens", r.get("used_rows")),
            "available": r.get("available_tokens", r.get("available_rows")),
            "share": r["share"],
        }
        for r in data_report or []
    ]
    card = ModelCard.from_template(
        card_data,
        template_path=str(MODEL_CARD_TEMPLATE),
        model_name=model_name,
        summary=summary,
        stage=stage,
        base_model=base_model,
        base_model_url=f"https://huggingface.co/{base_model}" if base_model else "",
        repo_id=repo_id,
        training=training,
        data_report=report,
        results_table=results_table(results) if results else "",
        lineage=rows,
        chat=chat,
        limitations=limitations or "A research artefact: evaluate it on your own data before any use.",
        load_kwargs=load_kwargs,
        speech=speech,
        speech_llm=speech_llm,
        speech_prompt=speech_prompt,
    )
    return str(card)


def size_category(n: int) -> str:
    for limit, name in (
        (1_000, "n<1K"),
        (10_000, "1K<n<10K"),
        (100_000, "10K<n<100K"),
        (1_000_000, "100K<n<1M"),
    ):
        if n < limit:
            return name
    return "n>1M"


def dataset_info(dataset: Any) -> dict[str, Any]:
    """The `dataset_info` front matter `DatasetDict.push_to_hub` writes: features, and per split the bytes and
    rows (without num_bytes, `datasets` warns that the YAML's splits are malformed on every load)."""
    first = next(iter(dataset.values()))
    splits = [{"name": s, "num_bytes": int(d.data.nbytes), "num_examples": len(d)} for s, d in dataset.items()]
    return {
        "features": first.features._to_yaml_list(),
        "splits": splits,
        "dataset_size": sum(x["num_bytes"] for x in splits),
    }


def render_dataset_card(
    *,
    recipe: Any,
    dataset: Any,
    report: dict[str, Any],
    lineage: list[dict[str, Any]],
    facts: dict[str, Any],
    source: str | None = None,
) -> str:
    """Dataset card: front matter (licence, configs in the Hub parquet layout, per-split num_examples) + sections.
    `facts` (summary, steps, columns, license, task_categories, note, optional `evaluation` markdown): what the
    stage or the dataset builder (data/<builder>.py `card_facts`) says of its rows."""
    from huggingface_hub import DatasetCard, DatasetCardData

    source = source or recipe.source
    repo_id = recipe.hub_dataset_id or recipe.output_dir
    splits = {name: len(dataset[name]) if name in dataset else 0 for name in report["splits"]}
    card_data = DatasetCardData(
        language=["fr"],
        license=facts["license"],
        pretty_name=Path(recipe.output_dir).name,
        task_categories=facts["task_categories"],
        size_categories=[size_category(sum(splits.values()))],
        source_datasets=[source] if is_hub_id(source) else None,
        tags=["llm4all", "french", getattr(recipe, "builder", lineage[-1]["stage"]), *facts.get("tags", [])],
        configs=[{"config_name": "default", "data_files": [{"split": s, "path": f"data/{s}-*"} for s in dataset]}],
        dataset_info=dataset_info(dataset),
    )
    source_md = (
        f"[`{source}`](https://huggingface.co/datasets/{source})" if is_hub_id(source) else f"`{source}` (local)"
    )
    entry = lineage[-1]
    card = DatasetCard.from_template(
        card_data,
        template_path=str(DATASET_CARD_TEMPLATE),
        pretty_name=Path(recipe.output_dir).name,
        summary=facts["summary"],
        source=source_md,
        license=facts["license"],
        source_license_note=facts["note"],
        stage=lineage[-1]["stage"],
        builder=getattr(recipe, "builder", None),
        steps=facts["steps"],
        group=report.get("group"),
        splits_from=report.get("splits_from"),
        splits=splits,
        skipped={
            **report.get("skipped", {}),
            **({"without a summary": len(report["without_summary"])} if report.get("without_summary") else {}),
        },
        columns=facts["columns"],
        repo_id=repo_id,
        output_dir=recipe.output_dir,
        first_split=next(iter(dataset)),
        evaluation=facts.get("evaluation", ""),
        recipe_yaml=yaml.safe_dump(entry["recipe"], sort_keys=False, allow_unicode=True).rstrip(),
        versions=", ".join(f"{k} {v}" for k, v in entry["versions"].items()),
    )
    return str(card)
