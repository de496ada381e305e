"""Typed dataset mixtures: every loader, weights as shares, shuffling before subsampling, repetition,
token-weighted shares, explicit eval sets and the per-stage column check."""

import json
import re

import datasets
import pytest

from llm4all_recipes.data.mixture import (
    build_mixture,
    check_sources,
    load_eval_sets,
    load_source,
    peek_columns,
)
from llm4all_recipes.errors import RecipeError
from llm4all_recipes.fields import DatasetSource


def jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)


@pytest.fixture
def two_sources(tmp_path):
    a = jsonl(tmp_path / "a.jsonl", [{"text": f"a{i}", "extra": i} for i in range(100)])
    b = jsonl(tmp_path / "b.jsonl", [{"text": f"b{i}"} for i in range(30)])
    return a, b


def test_weights_are_shares_of_rows(two_sources):
    a, b = two_sources
    sources = [DatasetSource(path=a, weight=3), DatasetSource(path=b, weight=1)]
    mixed, report = build_mixture(sources, needed=["text"], seed=0)
    # default total: the largest with no repetition = min(100 / 0.75, 30 / 0.25) = 120 -> 90 + 30
    assert len(mixed) == 120
    assert sum(t.startswith("a") for t in mixed["text"]) == 90
    assert [r["used_rows"] for r in report] == [90, 30]
    assert [r["share"] for r in report] == [0.75, 0.25]
    assert mixed.column_names == ["text"]  # reduced to the stage's columns


def test_shuffle_happens_before_subsampling_and_is_seeded(two_sources):
    a, _ = two_sources
    src = [DatasetSource(path=a)]
    first, _ = build_mixture(src, needed=["text"], seed=1, size=10)
    again, _ = build_mixture(src, needed=["text"], seed=1, size=10)
    other, _ = build_mixture(src, needed=["text"], seed=2, size=10)
    assert first["text"] == again["text"]
    assert first["text"] != other["text"]
    assert set(first["text"]) != {f"a{i}" for i in range(10)}  # not the head of the file


def test_too_small_source_is_an_error_unless_repeat(two_sources):
    a, b = two_sources
    sources = [DatasetSource(path=a), DatasetSource(path=b)]
    with pytest.raises(RecipeError) as exc:
        build_mixture(sources, needed=["text"], seed=0, size=100)
    assert exc.value.key == "datasets[1]" and "repeat: true" in str(exc.value)
    sources[1].repeat = True
    mixed, report = build_mixture(sources, needed=["text"], seed=0, size=100)
    assert report[1]["used_rows"] == 50 and report[1]["repeated"]
    assert sum(t.startswith("b") for t in mixed["text"]) == 50
    assert len(set(t for t in mixed["text"] if t.startswith("b"))) == 30  # every b row used before any repeat


def test_token_weighted_shares(tmp_path):
    long = jsonl(tmp_path / "long.jsonl", [{"text": "x" * 9} for _ in range(50)])  # 10 "tokens" each
    short = jsonl(tmp_path / "short.jsonl", [{"text": "y"} for _ in range(200)])  # 2 "tokens" each

    def count(ds):
        return [len(t) + 1 for t in ds["text"]]

    sources = [DatasetSource(path=long, weight=0.8), DatasetSource(path=short, weight=0.2)]
    mixed, report = build_mixture(sources, needed=["text"], seed=0, size=400, count_tokens=count)
    assert [r["used_tokens"] for r in report] == [320, 80]
    assert report[0]["share"] == pytest.approx(0.8)
    assert sum(len(t) + 1 for t in mixed["text"]) == 400


def test_column_renaming_and_check(tmp_path):
    path = jsonl(tmp_path / "c.jsonl", [{"conversation": [{"role": "user", "content": "salut"}]}])
    src = DatasetSource(path=path, columns={"conversation": "messages"})
    ds = load_source(src, "datasets[0]", ["messages"])
    assert ds.column_names == ["messages"]
    check_sources([src], "datasets", ["messages"], static=False)
    with pytest.raises(RecipeError, match=r"no column \['messages'\]") as exc:
        check_sources([DatasetSource(path=path)], "datasets", ["messages"], static=False)
    assert exc.value.key == "datasets[0].columns"


@pytest.mark.parametrize(
    "kind", ["jsonl", "json-array", "parquet", "csv", "save_to_disk", "dataset_dict", "hub_layout"]
)
def test_every_loader(tmp_path, kind):
    rows = [{"text": f"t{i}"} for i in range(5)]
    ds = datasets.Dataset.from_list(rows)
    split = "train"
    if kind == "jsonl":
        path = jsonl(tmp_path / "d.jsonl", rows)
    elif kind == "json-array":
        path = str(tmp_path / "d.json")
        (tmp_path / "d.json").write_text(json.dumps(rows))
    elif kind == "parquet":
        path = str(tmp_path / "d.parquet")
        ds.to_parquet(path)
    elif kind == "csv":
        path = str(tmp_path / "d.csv")
        ds.to_csv(path, index=False)
    elif kind == "save_to_disk":
        path = str(tmp_path / "saved")
        ds.save_to_disk(path)
    elif kind == "dataset_dict":
        path, split = str(tmp_path / "dd"), "validation"
        datasets.DatasetDict({"train": ds.select([0]), "validation": ds}).save_to_disk(path)
    else:  # the Hub's parquet layout, as `publish` writes it
        path = str(tmp_path / "hub")
        (tmp_path / "hub" / "data").mkdir(parents=True)
        ds.to_parquet(str(tmp_path / "hub" / "data" / "train-00000-of-00001.parquet"))
    src = DatasetSource(path=path, split=split)
    assert peek_columns(src, "datasets[0]") == {"text"}
    loaded = load_source(src, "datasets[0]", ["text"])
    assert sorted(loaded["text"]) == [f"t{i}" for i in range(5)]


def test_missing_split_is_named(tmp_path):
    path = str(tmp_path / "dd")
    datasets.DatasetDict({"train": datasets.Dataset.from_list([{"text": "a"}])}).save_to_disk(path)
    with pytest.raises(RecipeError, match="no split 'test'") as exc:
        check_sources([DatasetSource(path=path, split="test")], "eval_datasets", ["text"], static=False)
    assert exc.value.key == "eval_datasets[0].split"


def test_corrupt_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"\n')
    with pytest.raises(RecipeError, match=r"bad.jsonl:1: invalid JSON"):
        check_sources([DatasetSource(path=str(path))], "datasets", ["text"], static=False)


def test_eval_sets_are_used_whole_and_named(two_sources):
    a, b = two_sources
    evals = load_eval_sets([DatasetSource(path=a, weight=0.1), DatasetSource(path=b)], needed=["text"])
    assert list(evals) == ["a", "b"]
    assert len(evals["a"]) == 100 and len(evals["b"]) == 30


def test_empty_source_is_an_error(tmp_path):
    empty_file = tmp_path / "empty.jsonl"
    empty_file.write_text("\n")
    with pytest.raises(RecipeError, match=r"empty\.jsonl is empty") as exc:
        check_sources([DatasetSource(path=str(empty_file))], "datasets", ["text"], static=False)
    assert exc.value.key == "datasets[0].path"


def test_streaming_and_max_rows(two_sources):
    a, _ = two_sources
    streamed = load_source(DatasetSource(path=a, streaming=True, max_rows=10), "datasets[0]", ["text"], seed=3)
    assert len(streamed) == 10 and set(streamed["text"]) <= {f"a{i}" for i in range(100)}
    capped = load_source(DatasetSource(path=a, max_rows=7), "eval_datasets[0]", ["text"], seed=3)
    assert len(capped) == 7
    assert (
        capped["text"] == load_source(DatasetSource(path=a, max_rows=7), "eval_datasets[0]", ["text"], seed=3)["text"]
    )
    with pytest.raises(RecipeError, match="needs max_rows") as exc:
        check_sources([DatasetSource(path=a, streaming=True)], "datasets", ["text"], static=False)
    assert exc.value.key == "datasets[0].max_rows"


def test_text_rows_without_text_are_named(tmp_path):
    """Used to be a TypeError in the token counter (tokenizer(None))."""
    path = jsonl(tmp_path / "t.jsonl", [{"text": "a"}, {"title": "no text"}, {"text": None}, {"text": "b"}])
    count = lambda ds: [len(t) for t in ds["text"]]  # noqa: E731  (never reached)
    with pytest.raises(RecipeError, match=r"row 2 of .*t\.jsonl has no text \(missing or null; 2 such rows\)") as err:
        build_mixture([DatasetSource(path=path)], needed=["text"], seed=0, count_tokens=count)
    assert err.value.key == "datasets[0].path"


@pytest.mark.parametrize(
    ("message", "problem"),
    [
        ({"role": "bot", "content": "x"}, "message 2 has role 'bot', not one of system, user, assistant, tool"),
        ({"role": "assistant"}, "message 2 (assistant) has no text content (content: None)"),
        ({"content": "x"}, "message 2 has role None"),
    ],
)
def test_chat_rows_with_a_bad_message_are_named(tmp_path, message, problem):
    """Used to be a jinja2 UndefinedError deep in tokenization."""
    good = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    path = jsonl(tmp_path / "c.jsonl", [good, {"messages": [{"role": "user", "content": "q"}, message]}])
    with pytest.raises(RecipeError, match="row 2 of .*c.jsonl: " + re.escape(problem)):
        load_source(DatasetSource(path=path), "datasets[0]", ["messages"])


def test_a_corrupt_saved_dataset_is_named(tmp_path):
    """A saved dataset whose dataset_dict.json is corrupt: used to be a JSONDecodeError in peek_columns."""
    datasets.DatasetDict({"train": datasets.Dataset.from_list([{"text": "a"}])}).save_to_disk(tmp_path / "ds")
    (tmp_path / "ds" / "dataset_dict.json").write_text('{"splits": ["tr')
    with pytest.raises(RecipeError, match=r"dataset_dict.json is unreadable or not JSON .*rebuild") as err:
        peek_columns(DatasetSource(path=str(tmp_path / "ds")), "datasets[0]")
    assert err.value.key == "datasets[0].path"
