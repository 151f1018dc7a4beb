"""mars.data.sources: every file format, every source, every bad-input case, and the Hub path."""
from __future__ import annotations

import csv
import gzip
import json
import logging
import os
import re
from collections import Counter
from pathlib import Path

import pytest

from mars.config import FieldNames
from mars.data.records import DataFormatError, PreferencePair
from mars.data.sources import (
    DEFAULT_HUB, NORMALISERS, REWARDBENCH_SECTIONS, check_pair, load_pairs, read_rows,
)

ROWS = [
    {"prompt": "What is 2+2?", "chosen": "4", "rejected": "5"},
    {"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Lyon, I think."},
    {"prompt": "Say hi", "chosen": "Hi there!\nHow are you?", "rejected": "no"},
]


def write(path: Path, rows: list[dict]) -> Path:
    """Write `rows` in the format that `path`'s extension names."""
    name = path.name
    if name.endswith(".jsonl.gz"):
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    elif name.endswith(".jsonl"):
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    elif name.endswith(".json"):
        path.write_text(json.dumps(rows), encoding="utf-8")
    elif name.endswith(".parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    elif name.endswith(".csv"):
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    else:
        path.write_text("whatever")
    return path


def texts(pairs):
    return [(p.prompt, p.chosen, p.rejected) for p in pairs]


def fake_hub(monkeypatch, rows: list[dict]) -> list:
    """Make `datasets.load_dataset` return `rows` as a Dataset; returns the calls it received."""
    import datasets

    calls = []

    def load_dataset(name, subset=None, *, data_dir=None, split=None):
        calls.append((name, subset, data_dir, split))
        return datasets.Dataset.from_list(rows)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


# ---------------------------------------------------------------------------------------------
# File formats


@pytest.mark.parametrize("name", ["d.jsonl", "d.jsonl.gz", "d.json", "d.parquet", "d.csv"])
def test_every_format_gives_the_same_pairs(tmp_path, name):
    result = load_pairs("local", path=str(write(tmp_path / name, ROWS)))
    assert texts(result.pairs) == [(r["prompt"], r["chosen"], r["rejected"]) for r in ROWS]
    assert [p.id for p in result.pairs] == ["local-0", "local-1", "local-2"]
    assert all(p.source == "local" for p in result.pairs)
    assert result.skipped == Counter() and result.origin == str(tmp_path / name)


def test_json_file_holding_json_lines(tmp_path):
    path = tmp_path / "lines.json"
    path.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n\n")  # blank lines are ignored
    assert texts(load_pairs("local", path=str(path)).pairs) == texts(
        load_pairs("local", path=str(write(tmp_path / "d.jsonl", ROWS))).pairs)
    assert next(read_rows(str(path)))[0] == f"{path}:1"


@pytest.mark.parametrize("name, location", [
    ("d.jsonl", "d.jsonl:2"), ("d.jsonl.gz", "d.jsonl.gz:2"), ("d.json", "d.json[item 1]"),
    ("d.parquet", "d.parquet:row 1"), ("d.csv", "d.csv:line 3"),
])
def test_errors_name_the_location_in_each_format(tmp_path, name, location):
    rows = [dict(r) for r in ROWS]
    rows[1]["rejected"] = "  "
    path = write(tmp_path / name, rows)
    with pytest.raises(DataFormatError) as err:
        load_pairs("local", path=str(path))
    assert str(err.value) == f"{tmp_path / location}: field 'rejected' is empty"


def test_csv_line_numbers_follow_multiline_fields(tmp_path):
    rows = [{"prompt": "a\nb\nc", "chosen": "x", "rejected": "y"},
            {"prompt": "p", "chosen": "same", "rejected": "same"}]
    with pytest.raises(DataFormatError, match=r"d\.csv:line 5: chosen is identical to rejected"):
        load_pairs("local", path=str(write(tmp_path / "d.csv", rows)))


def test_local_with_custom_field_names(tmp_path):
    rows = [{"uid": 7, "question": "q", "good": "g", "bad": "b", "margin": 0.5},
            {"uid": "x", "question": "", "good": "g2", "bad": "b2", "margin": 1.0}]
    fields = FieldNames(prompt="question", chosen="good", rejected="bad", id="uid")
    pairs = load_pairs("local", path=str(write(tmp_path / "d.jsonl", rows)), fields=fields).pairs
    assert [p.id for p in pairs] == ["7", "x"]
    assert texts(pairs) == [("q", "g", "b"), ("", "g2", "b2")]  # an empty prompt is allowed
    assert pairs[0].meta == {"margin": 0.5}  # other columns ride along

    no_prompt = FieldNames(prompt=None, chosen="good", rejected="bad")
    pairs = load_pairs("local", path=str(write(tmp_path / "d.csv", rows)), fields=no_prompt).pairs
    assert texts(pairs) == [("", "g", "b"), ("", "g2", "b2")]
    assert [p.id for p in pairs] == ["local-0", "local-1"]

    with pytest.raises(DataFormatError, match=r"d\.jsonl:1: field 'prompt' is missing"):
        load_pairs("local", path=str(tmp_path / "d.jsonl"))  # default names do not fit


# ---------------------------------------------------------------------------------------------
# Bad input


def test_malformed_json_line_names_file_and_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n" + '{"prompt": "x", "chosen": \n'
                    + json.dumps(ROWS[1]) + "\n")
    with pytest.raises(DataFormatError, match=rf"^{re.escape(str(path))}:2: malformed json \("):
        load_pairs("local", path=str(path))
    result = load_pairs("local", path=str(path), on_error="skip")
    assert result.skipped == Counter({"malformed json": 1})
    assert texts(result.pairs) == texts(load_pairs("local", path=str(
        write(tmp_path / "ok.jsonl", ROWS[:2]))).pairs)


def test_malformed_json_list_always_raises(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('[{"prompt": "x", "chosen": "a", "rejected": "b"},\n {"prompt": ]')
    for on_error in ("raise", "skip"):
        with pytest.raises(DataFormatError,
                           match=rf"{re.escape(str(path))}: malformed json at line 2"):
            load_pairs("local", path=str(path), on_error=on_error)


BAD = [  # (row, message, skip reason)
    ({"prompt": "p", "rejected": "r"}, "field 'chosen' is missing", "missing field 'chosen'"),
    ({"prompt": "p", "chosen": None, "rejected": "r"}, "field 'chosen' is missing",
     "missing field 'chosen'"),
    ({"chosen": "c", "rejected": "r"}, "field 'prompt' is missing", "missing field 'prompt'"),
    ({"prompt": "p", "chosen": "", "rejected": "r"}, "field 'chosen' is empty", "empty response"),
    ({"prompt": "p", "chosen": "c", "rejected": " \n\t"}, "field 'rejected' is empty",
     "empty response"),
    ({"prompt": 3, "chosen": "c", "rejected": "r"}, "field 'prompt' is int, not a string",
     "non-string field 'prompt'"),
    ({"prompt": "p", "chosen": ["c"], "rejected": "r"}, "field 'chosen' is list, not a string",
     "non-string field 'chosen'"),
    ({"prompt": "p", "chosen": "same", "rejected": "same"}, "chosen is identical to rejected",
     "chosen identical to rejected"),
]


@pytest.mark.parametrize("row, message, reason", BAD)
def test_bad_record_raises_with_location_and_problem(tmp_path, row, message, reason):
    path = write(tmp_path / "data.jsonl", [ROWS[0], ROWS[1], row])
    with pytest.raises(DataFormatError) as err:
        load_pairs("local", path=str(path))
    assert str(err.value) == f"{path}:3: {message}"
    assert err.value.reason == reason


def test_record_that_is_not_an_object(tmp_path):
    path = write(tmp_path / "d.json", [ROWS[0], "just a string"])
    with pytest.raises(DataFormatError, match=r"d\.json\[item 1\]: record is str, not an object"):
        load_pairs("local", path=str(path))


def test_skip_counts_each_reason_and_logs_one_summary(tmp_path, caplog):
    rows = ROWS + [row for row, _, _ in BAD]
    path = write(tmp_path / "data.jsonl", rows)
    with caplog.at_level(logging.WARNING, logger="mars.data.sources"):
        result = load_pairs("local", path=str(path), on_error="skip")
    assert texts(result.pairs) == texts(load_pairs("local", path=str(
        write(tmp_path / "good.jsonl", ROWS))).pairs)
    assert result.skipped == Counter({
        "missing field 'chosen'": 2, "empty response": 2, "missing field 'prompt'": 1,
        "non-string field 'prompt'": 1, "non-string field 'chosen'": 1,
        "chosen identical to rejected": 1})
    assert len(caplog.records) == 1
    assert caplog.records[0].getMessage() == (
        f"skipped 8 of 11 records in {path}: 2 missing field 'chosen', 2 empty response, "
        "1 missing field 'prompt', 1 non-string field 'prompt', 1 non-string field 'chosen', "
        "1 chosen identical to rejected")


def test_skip_with_nothing_left_is_an_error(tmp_path):
    path = write(tmp_path / "d.jsonl", [row for row, _, _ in BAD])
    with pytest.raises(DataFormatError) as err:
        load_pairs("local", path=str(path), on_error="skip")
    assert str(err.value) == (
        f"{path}: no usable record (8 skipped: 2 missing field 'chosen', 2 empty response, "
        "1 missing field 'prompt', 1 non-string field 'prompt', 1 non-string field 'chosen', "
        "1 chosen identical to rejected)")


@pytest.mark.parametrize("name", ["d.jsonl", "d.jsonl.gz", "d.json", "d.csv", "d.parquet"])
def test_an_empty_file_is_named_as_empty(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"")
    for on_error in ("raise", "skip"):
        with pytest.raises(DataFormatError) as err:
            load_pairs("local", path=str(path), on_error=on_error)
        assert str(err.value) == f"{path}: the file is empty"
    if name == "d.parquet":
        return
    # Only blank lines (and a BOM), or a gzip file whose content is empty, is empty too.
    content = b"" if name.endswith(".gz") else b"\xef\xbb\xbf\n\r\n" + (b"" if name == "d.csv" else b" \t\n")
    if name.endswith(".gz"):
        with gzip.open(path, "wb") as f:
            f.write(content)
    else:
        path.write_bytes(content)
    with pytest.raises(DataFormatError) as err:
        load_pairs("local", path=str(path))
    assert str(err.value) == f"{path}: the file is empty"


def test_a_file_without_records_says_so(tmp_path):
    (tmp_path / "d.json").write_text("[]")
    (tmp_path / "d.csv").write_text("prompt,chosen,rejected\n")
    for name in ("d.json", "d.csv"):
        with pytest.raises(DataFormatError) as err:
            load_pairs("local", path=str(tmp_path / name))
        assert str(err.value) == f"{tmp_path / name}: no usable record (it holds no records)"


# A line that is not UTF-8: b"\xff" is never valid, b"\xc3(" is a broken two-byte sequence.
GOOD = [json.dumps(r).encode() + b"\n" for r in ROWS]
BAD_LINE = b'{"prompt": "caf\xc3(", "chosen": "a", "rejected": "b"}\n'


def _write_bytes(path: Path, data: bytes) -> Path:
    if path.name.endswith(".gz"):
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)
    return path


@pytest.mark.parametrize("name, bom", [("d.jsonl", b""), ("d.jsonl", b"\xef\xbb\xbf"),
                                       ("d.jsonl.gz", b""), ("d.json", b"\xef\xbb\xbf")])
def test_a_line_that_is_not_utf8_is_named_and_can_be_skipped(tmp_path, name, bom):
    data = bom + GOOD[0] + BAD_LINE + GOOD[1] + GOOD[2]  # a .json of lines is read as JSON Lines
    path = _write_bytes(tmp_path / name, data)
    offset = data.index(b"\xc3(")  # the byte that starts the broken sequence
    with pytest.raises(DataFormatError) as err:
        load_pairs("local", path=str(path))
    assert str(err.value) == f"{path}:2: not valid UTF-8 (byte offset {offset} in the file)"
    assert err.value.reason == "not valid utf-8"
    result = load_pairs("local", path=str(path), on_error="skip")
    assert result.skipped == Counter({"not valid utf-8": 1})
    assert texts(result.pairs) == [(r["prompt"], r["chosen"], r["rejected"]) for r in ROWS]


def test_skip_summary_counts_lines_that_are_not_utf8(tmp_path, caplog):
    data = GOOD[0] + b"\xff\xfe garbage\n" + BAD_LINE + b'{"prompt": "p", "chosen": "x"}\n' + GOOD[1]
    path = _write_bytes(tmp_path / "d.jsonl", data)
    with caplog.at_level(logging.WARNING, logger="mars.data.sources"):
        result = load_pairs("local", path=str(path), on_error="skip")
    assert len(result.pairs) == 2
    assert [r.getMessage() for r in caplog.records] == [
        f"skipped 3 of 5 records in {path}: 2 not valid utf-8, 1 missing field 'rejected'"]
    _write_bytes(path, BAD_LINE + b"\xff\n")
    with pytest.raises(DataFormatError) as err:
        load_pairs("local", path=str(path), on_error="skip")
    assert str(err.value) == f"{path}: no usable record (2 skipped: 2 not valid utf-8)"


def test_csv_line_that_is_not_utf8(tmp_path):
    header = b"prompt,chosen,rejected\r\n"
    multi = b'"two\r\nlines",yes,no\r\n'
    bad = b'"first\r\nsecond \xe9t\xe9",yes,no\r\n'  # latin-1 bytes on the record's 2nd line
    data = b"\xef\xbb\xbf" + header + multi + bad + b"q,a,b\r\n"
    path = _write_bytes(tmp_path / "d.csv", data)
    with pytest.raises(DataFormatError) as err:
        load_pairs("local", path=str(path))
    offset = data.index(b"\xe9")
    assert str(err.value) == f"{path}:line 5: not valid UTF-8 (byte offset {offset} in the file)"
    result = load_pairs("local", path=str(path), on_error="skip")
    assert texts(result.pairs) == [("two\r\nlines", "yes", "no"), ("q", "a", "b")]
    assert result.skipped == Counter({"not valid utf-8": 1})
    _write_bytes(path, b"prompt,ch\xf6sen,rejected\n" + b"q,a,b\n")  # the header: nothing to read
    for on_error in ("raise", "skip"):
        with pytest.raises(DataFormatError, match=r"d\.csv:line 1: not valid UTF-8 \(byte offset 9 "):
            load_pairs("local", path=str(path), on_error=on_error)


def test_json_list_that_is_not_utf8_always_raises_with_the_offset(tmp_path):
    data = b'[{"prompt": "a", "chosen": "b", "rejected": "c"},\n {"prompt": "\xff", "chosen": "b", "rejected": "c"}]'
    path = _write_bytes(tmp_path / "d.json.gz", data)
    for on_error in ("raise", "skip"):
        with pytest.raises(DataFormatError) as err:
            load_pairs("local", path=str(path), on_error=on_error)
        offset = data.index(b"\xff")
        assert str(err.value) == f"{path}:2: not valid UTF-8 (byte offset {offset} in the file)"


def test_unsupported_extension_missing_file_and_bad_arguments(tmp_path):
    for name in ("d.txt", "d.xlsx", "d.parquet.gz", "noext"):
        with pytest.raises(DataFormatError, match="unsupported file type"):
            load_pairs("local", path=str(write(tmp_path / name, ROWS)))
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(DataFormatError, match="bad.parquet: not a readable parquet file"):
        load_pairs("local", path=str(tmp_path / "bad.parquet"))
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        load_pairs("local", path=str(missing))
    with pytest.raises(ValueError, match="unknown data source 'demo'"):
        load_pairs("demo", path=str(write(tmp_path / "d.jsonl", ROWS)))
    with pytest.raises(ValueError, match="on_error='ignore'"):
        load_pairs("local", path=str(tmp_path / "d.jsonl"), on_error="ignore")
    with pytest.raises(ValueError, match="needs a path"):
        load_pairs("local")


def test_check_pair():
    good = PreferencePair("a", "", "yes", "no")
    assert check_pair(good) is good
    with pytest.raises(DataFormatError, match="chosen is identical to rejected"):
        check_pair(PreferencePair("a", "p", "x", "x"))
    with pytest.raises(DataFormatError, match="field 'rejected' is bytes, not a string"):
        check_pair(PreferencePair("a", "p", "x", b"y"))


# ---------------------------------------------------------------------------------------------
# Source normalisers


def hh(prompt: str, chosen: str, rejected: str) -> dict:
    return {"chosen": prompt + chosen, "rejected": prompt + rejected}


def test_hh_rlhf_splits_off_the_shared_prompt(tmp_path):
    turns = "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Joke?\n\nAssistant:"
    rows = [
        hh(turns, "  Two spaces kept.\n", " No."),  # one leading space stripped, rest verbatim
        # A response that itself holds "\n\nAssistant:": the prompt stops where both continue.
        hh("\n\nHuman: Q\n\nAssistant:", " A\n\nAssistant: more", " B"),
        {"chosen": "\n\nHuman: Q\n\nAssistant: A", "rejected": "\n\nHuman: R\n\nAssistant: A"},
    ]
    path = write(tmp_path / "hh.jsonl", rows)
    with pytest.raises(DataFormatError,
                       match=r"hh\.jsonl:3: chosen and rejected do not share a prompt"):
        load_pairs("hh_rlhf", path=str(path))
    result = load_pairs("hh_rlhf", path=str(path), on_error="skip")
    assert texts(result.pairs) == [(turns, " Two spaces kept.\n", "No."),
                                   ("\n\nHuman: Q\n\nAssistant:", "A\n\nAssistant: more", "B")]
    assert result.skipped == Counter({"chosen and rejected do not share a prompt": 1})
    assert [p.id for p in result.pairs] == ["hh_rlhf-0", "hh_rlhf-1"]


def test_ultrafeedback_plain_and_chat_rows_agree(tmp_path):
    plain = {"prompt": "Hi?", "chosen": "Hello!", "rejected": "Go away.", "source_index": 4,
             "metadata": {"score_chosen": 8.0, "score_rejected": 2.0, "noise": {"selected": True}}}
    chat = {"chosen": [{"role": "user", "content": "Hi?"},
                       {"role": "assistant", "content": "Hello!"}],
            "rejected": [{"role": "user", "content": "Hi?"},
                         {"role": "assistant", "content": "Go away."}],
            "score_chosen": 8.0, "score_rejected": 2.0}
    a, b = load_pairs("ultrafeedback", path=str(write(tmp_path / "d.jsonl", [plain, chat]))).pairs
    assert texts([a]) == texts([b]) == [("Hi?", "Hello!", "Go away.")]
    assert a.meta == {"score_chosen": 8.0, "score_rejected": 2.0, "noise": {"selected": True},
                      "source_index": 4}
    assert b.meta == {"score_chosen": 8.0, "score_rejected": 2.0}

    chat["rejected"] = [{"role": "user", "content": "Hi?"}]
    with pytest.raises(DataFormatError, match=r"d\.jsonl:1: no assistant message in 'rejected'"):
        load_pairs("ultrafeedback", path=str(write(tmp_path / "d.jsonl", [chat])))


def test_pku_saferlhf_shared_and_hub_formats(tmp_path):
    rows = [{"prompt": "p", "response": ["safe", "unsafe"]},
            {"prompt": "p", "response_0": "unsafe", "response_1": "safe",
             "safer_response_id": 1, "better_response_id": 0},
            {"prompt": "p", "response": ["only one"]},
            {"prompt": "p", "response_0": "a", "response_1": "b", "safer_response_id": 2}]
    result = load_pairs("pku_saferlhf", path=str(write(tmp_path / "d.json", rows)),
                        on_error="skip")
    assert texts(result.pairs) == [("p", "safe", "unsafe")] * 2
    assert result.pairs[1].meta == {"safer_response_id": 1, "better_response_id": 0}
    assert result.skipped == Counter({"bad field 'response'": 1,
                                      "bad field 'safer_response_id'": 1})


def test_rewardbench_sections(tmp_path):
    assert len(REWARDBENCH_SECTIONS) == 23
    assert Counter(REWARDBENCH_SECTIONS.values()) == {
        "Chat": 5, "Chat Hard": 6, "Safety": 5, "Reasoning": 7}
    rows = [{"prompt": "p", "chosen": "c", "rejected": "r", "subset": "hep-go", "id": 30},
            {"prompt": "p", "chosen": "c", "rejected": "r", "subset": "new-subset", "id": 31}]
    pairs = load_pairs("rewardbench", path=str(write(tmp_path / "d.parquet", rows))).pairs
    assert [p.id for p in pairs] == ["30", "31"]
    assert [p.meta for p in pairs] == [{"subset": "hep-go", "section": "Reasoning"},
                                       {"subset": "new-subset", "section": None}]


def test_every_source_has_a_normaliser_and_hub_default():
    assert set(NORMALISERS) == {"hh_rlhf", "ultrafeedback", "pku_saferlhf", "rewardbench",
                                "local"}
    assert set(DEFAULT_HUB) == set(NORMALISERS) - {"local"}


# ---------------------------------------------------------------------------------------------
# The Hub path (datasets.load_dataset patched: no network here)


def test_hub_arguments_and_origin(monkeypatch):
    rows = [{"prompt": "p", "chosen": "c", "rejected": "r", "subset": "donotanswer", "id": 1}]
    calls = fake_hub(monkeypatch, rows)
    result = load_pairs("rewardbench")
    assert calls == [("allenai/reward-bench", None, None, "filtered")]  # its only real split
    assert result.origin == "hub:allenai/reward-bench[filtered]"
    assert result.pairs[0].meta["section"] == "Safety"

    calls = fake_hub(monkeypatch, [hh("\n\nHuman: Q\n\nAssistant:", " A", " B"),
                                   {"chosen": "x", "rejected": "x"}])
    origin = "hub:Anthropic/hh-rlhf/harmless-base[test]"
    with pytest.raises(DataFormatError, match=rf"^{re.escape(origin)}:row 1: chosen and"):
        load_pairs("hh_rlhf", hub_data_dir="harmless-base", split="test")
    assert calls == [("Anthropic/hh-rlhf", None, "harmless-base", "test")]
    result = load_pairs("hh_rlhf", hub_data_dir="harmless-base", split="test", on_error="skip")
    assert result.origin == origin and len(result.pairs) == 1


# ---------------------------------------------------------------------------------------------
# The real data ($MARS_DATA_DIR)


@pytest.fixture(scope="module")
def data_dir() -> Path:
    # CI sets MARS_DATA_DIR=../shared/data; the same folder beside the checkout is the default.
    beside = Path(__file__).resolve().parents[2] / "shared" / "data"
    root = Path(os.environ.get("MARS_DATA_DIR") or beside)
    if not root.is_dir():
        pytest.skip(f"MARS_DATA_DIR not set or missing: {root}")
    return root


def real(data_dir: Path, source: str, name: str, **kw):
    return load_pairs(source, path=str(data_dir / name), **kw)


def test_real_hh_rlhf(data_dir):
    name = "hh-rlhf/harmless-base-test.jsonl.gz"
    # Four dialogues end in an empty chosen turn ("\n\nAssistant: "): nothing to prefer.
    with pytest.raises(DataFormatError, match=r"harmless-base-test\.jsonl\.gz:87: field 'chosen'"):
        real(data_dir, "hh_rlhf", name)
    result = real(data_dir, "hh_rlhf", name, on_error="skip")
    assert result.skipped == Counter({"empty response": 4})
    assert len(result.pairs) == 2312 - 4
    assert len({p.id for p in result.pairs}) == len(result.pairs)
    for p in result.pairs:
        assert p.prompt.startswith("\n\nHuman:") and p.prompt.endswith("\n\nAssistant:")
        assert p.chosen != p.rejected and p.chosen.strip() and p.rejected.strip()
        assert p.source == "hh_rlhf"


@pytest.mark.parametrize("name, rows, skipped", [
    ("train.jsonl", 1000, {"chosen identical to rejected": 4, "empty response": 2}),
    ("eval.jsonl", 200, {"chosen identical to rejected": 1}),
    ("noisy-clean.jsonl", 1000, {"chosen identical to rejected": 4, "empty response": 2}),
])
def test_real_ultrafeedback(data_dir, name, rows, skipped):
    # A few judge-labelled pairs have two equal answers (e.g. "negative" vs "negative") or an
    # empty one: skipped, counted and reported.
    result = real(data_dir, "ultrafeedback", f"ultrafeedback/{name}", on_error="skip")
    assert result.skipped == Counter(skipped)
    assert len(result.pairs) + sum(skipped.values()) == rows
    assert all({"score_chosen", "score_rejected", "source_index"} <= p.meta.keys()
               for p in result.pairs)
    assert all(p.prompt.strip() for p in result.pairs)


def test_real_ultrafeedback_label_flip(data_dir):
    flip = real(data_dir, "ultrafeedback", "ultrafeedback/noisy-label_flip_20.jsonl",
                on_error="skip")
    clean = {p.id: p for p in real(data_dir, "ultrafeedback", "ultrafeedback/noisy-clean.jsonl",
                                   on_error="skip").pairs}
    assert len(flip.pairs) == 994 and all("noise" in p.meta for p in flip.pairs)
    selected = [p for p in flip.pairs if p.meta["noise"]["selected"]]
    with open(data_dir / "ultrafeedback/noisy-label_flip_20.jsonl", encoding="utf-8") as f:
        in_file = sum(json.loads(line)["metadata"]["noise"]["selected"] for line in f)
    assert len(selected) == in_file == 200  # 20% of 1000; none of the 6 skipped records was flipped
    for p in flip.pairs:  # the selected pairs are the clean ones swapped, verbatim
        c = clean[p.id]
        expected = (c.rejected, c.chosen) if p.meta["noise"]["selected"] else (c.chosen, c.rejected)
        assert (p.prompt, p.chosen, p.rejected) == (c.prompt, *expected)


def test_real_pku_saferlhf(data_dir):
    result = real(data_dir, "pku_saferlhf", "pku-saferlhf/safer-vs-unsafe-5k.json")
    assert len(result.pairs) == 3000 and not result.skipped
    assert result.pairs[0].id == "pku_saferlhf-0"


# The Hub gives the same pairs as the local file (first rows of each real file, in Hub format).


def test_real_hh_rlhf_from_hub(data_dir, monkeypatch):
    with gzip.open(data_dir / "hh-rlhf/harmless-base-test.jsonl.gz", "rt") as f:
        rows = [json.loads(line) for line, _ in zip(f, range(100))]
    local = real(data_dir, "hh_rlhf", "hh-rlhf/harmless-base-test.jsonl.gz", on_error="skip")
    fake_hub(monkeypatch, rows)
    hub = load_pairs("hh_rlhf", hub_data_dir="harmless-base", split="test", on_error="skip")
    assert hub.skipped == Counter({"empty response": 1})  # line 87
    assert hub.pairs == local.pairs[:len(hub.pairs)]


def test_real_ultrafeedback_from_hub_chat_format(data_dir, monkeypatch):
    path = data_dir / "ultrafeedback/train.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()[:100]]
    chat = [{"chosen": [{"role": "user", "content": r["prompt"]},
                        {"role": "assistant", "content": r["chosen"]}],
             "rejected": [{"role": "user", "content": r["prompt"]},
                          {"role": "assistant", "content": r["rejected"]}],
             "score_chosen": r["metadata"]["score_chosen"],
             "score_rejected": r["metadata"]["score_rejected"],
             "source_index": r["source_index"]} for r in rows]
    calls = fake_hub(monkeypatch, chat)
    hub = load_pairs("ultrafeedback")
    assert calls == [("trl-lib/ultrafeedback_binarized", None, None, "train")]
    local = load_pairs("ultrafeedback", path=str(path), on_error="skip").pairs[:100]
    assert hub.pairs == local and [p.meta for p in hub.pairs] == [p.meta for p in local]


def test_real_pku_saferlhf_from_hub_format(data_dir, monkeypatch):
    path = data_dir / "pku-saferlhf/safer-vs-unsafe-5k.json"
    rows = json.loads(path.read_text(encoding="utf-8"))[:100]
    hub_rows = [{"prompt": r["prompt"],  # alternate which response_k is the safer one
                 "response_0": r["response"][i % 2], "response_1": r["response"][1 - i % 2],
                 "safer_response_id": i % 2, "better_response_id": 0}
                for i, r in enumerate(rows)]
    calls = fake_hub(monkeypatch, hub_rows)
    hub = load_pairs("pku_saferlhf")
    assert calls == [("PKU-Alignment/PKU-SafeRLHF", None, None, "train")]
    assert hub.pairs == load_pairs("pku_saferlhf", path=str(path)).pairs[:100]
