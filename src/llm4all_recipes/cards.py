"""Model and dataset cards, rendered from the Jinja templates in model_cards/ and dataset_cards/ through
huggingface_hub's `ModelCard` / `DatasetCard` (front matter with `base_model`, `datasets`, `model-index`).
"""

from pathlib import Path
from typing import Any

import yaml

from .paths import REPO_ROOT, is_hub_id

MODEL_CARD_TEMPLATE = REPO_ROOT / "model_cards" / "model_card.md"

LOWRANK_NOTE = ""


def parent_card_data(model_path: str | None) -> dict[str, Any]:
    """Front matter of the parent model's card (local folder), to inherit its licence and language."""
    if not model_path:
        return {}
    readme = Path(model_path) / "README.md"
    if not readme.is_file():
        return {}
    from huggingface_hub import ModelCard

    return ModelCard.load(readme).data.to_dict()


def base_model_repo(lineage: list[dict[str, Any]]) -> str | None:
    """The parent stage's Hub repo: its hub_model_id, or the Hub id it started from."""
    if len(lineage) < 2:
        return None
    parent = lineage[-2]
    if parent.get("hub_model_id"):
        return parent["hub_model_id"]
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
) -> str:
    """Markdown of a model card; `results` rows are {dataset_name, metric_type, metric_value}."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    inherited = parent_card_data(parent)
    base_model = base_model_repo(lineage)
    repo_id = lineage[-1].get("hub_model_id") or lineage[-1].get("output_dir") or model_name
    eval_results = [
        EvalResult(
            task_type="text-generation",
            dataset_type=r["dataset_name"],
            dataset_name=r["dataset_name"],
            metric_type=r["metric_type"],
            metric_value=float(r["metric_value"]),
        )
        for r in results or []
    ]
    card_data = ModelCardData(
        model_name=model_name,
        base_model=base_model,
        datasets=[d for d in datasets or [] if is_hub_id(d)] or None,
        license=license or inherited.get("license"),
        language=language or inherited.get("language"),
        library_name="transformers",
        pipeline_tag="text-generation",
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
        results=results or [],
        lineage=rows,
        chat=chat,
        limitations=limitations or "A research artefact: evaluate it on your own data before any use.",
        load_kwargs=load_kwargs,
    )
    return str(card)
