"""Every supported preference source, from a local file or the Hugging Face Hub, as pairs.

One reading path: `read_rows` turns a file into `(location, row)` dicts, the Hub yields rows of the
same shape, and one small normaliser per source (`NORMALISERS`) maps a row to prompt, chosen,
rejected and meta. `check_pair` then rejects what a reward model cannot learn from. A bad record
raises a `DataFormatError` naming its file and line, or with ``on_error="skip"`` is counted and
reported once, so that it never surfaces later as a bare traceback.
"""
from __future__ import annotations

import collections
import csv
import gzip
import io
import json
import logging
import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

from mars.config import FieldNames
from mars.data.records import DataFormatError, PreferencePair

log = logging.getLogger(__name__)

DEFAULT_HUB = {
    "hh_rlhf": "Anthropic/hh-rlhf",  # pick a part with hub_data_dir, e.g. "harmless-base"
    "ultrafeedback": "trl-lib/ultrafeedback_binarized",
    "pku_saferlhf": "PKU-Alignment/PKU-SafeRLHF",
    "rewardbench": "allenai/reward-bench",  # split "filtered"
}

REWARDBENCH_SECTIONS: dict[str, str] = {
    **dict.fromkeys(["alpacaeval-easy", "alpacaeval-length", "alpacaeval-hard", "mt-bench-easy",
                     "mt-bench-med"], "Chat"),
    **dict.fromkeys(["mt-bench-hard", "llmbar-natural", "llmbar-adver-neighbor",
                     "llmbar-adver-GPTInst", "llmbar-adver-GPTOut", "llmbar-adver-manual"],
                    "Chat Hard"),
    **dict.fromkeys(["refusals-dangerous", "refusals-offensive", "xstest-should-refuse",
                     "xstest-should-respond", "donotanswer"], "Safety"),
    **dict.fromkeys(["math-prm", "hep-cpp", "hep-go", "hep-java", "hep-js", "hep-python",
                     "hep-rust"], "Reasoning"),
}


class RecordError(DataFormatError):
    """One unusable record; `reason` is the short key it is counted under with on_error="skip"."""

    def __init__(self, reason: str, message: Optional[str] = None):
        super().__init__(message or reason)
        self.reason = reason


@dataclass
class LoadResult:
    pairs: list[PreferencePair]
    skipped: collections.Counter  # reason -> count (only non-empty with on_error="skip")
    origin: str  # the file path or "hub:NAME/DATA_DIR[split]"


# ---------------------------------------------------------------------------------------------
# Reading files


def _open_text(path: str):
    # Bytes that are not UTF-8 decode to lone surrogates (surrogateescape) instead of stopping the
    # read, so that each one is reported with its file, line and byte offset (`_bad_byte`), and
    # with on_error="skip" only its record is lost. newline="" is what csv needs and leaves JSON
    # lines untouched. A UTF-8 BOM (files saved by spreadsheet tools) is dropped by `_numbered`.
    opener = gzip.open if path.endswith(".gz") else open
    return opener(path, "rt", encoding="utf-8", errors="surrogateescape", newline="")


_BOM = "\ufeff"
_ESCAPED = re.compile("[\udc80-\udcff]")  # what surrogateescape makes of a byte that is not UTF-8


def _nbytes(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogateescape"))


def _bad_byte(text: str) -> Optional[int]:
    """Offset in bytes, within `text`'s encoding, of its first byte that is not UTF-8, or None."""
    m = _ESCAPED.search(text)
    return None if m is None else _nbytes(text[:m.start()])


def _not_utf8(location: str, offset: int) -> RecordError:
    # The offset counts the file's bytes from 0 (for .gz: the decompressed bytes), a BOM included.
    return RecordError("not valid utf-8", f"{location}: not valid UTF-8 (byte offset {offset} in the file)")


def _numbered(lines) -> Iterator[tuple[int, int, str]]:
    """`(line number from 1, byte offset of the line's start, line)`, a leading BOM dropped."""
    offset = 0
    for lineno, line in enumerate(lines, 1):
        start = offset
        offset += _nbytes(line)
        if lineno == 1 and line.startswith(_BOM):
            line, start = line[1:], start + 3
        yield lineno, start, line


def _json_lines(path: str, lines, skipped: Optional[collections.Counter]):
    for lineno, start, line in _numbered(lines):
        bad = _bad_byte(line)
        if bad is not None:
            if skipped is None:
                raise _not_utf8(f"{path}:{lineno}", start + bad)
            skipped["not valid utf-8"] += 1
            continue
        if not line.strip():
            continue  # blank lines (often a trailing one) are not records
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            if skipped is None:
                raise RecordError("malformed json",
                                  f"{path}:{lineno}: malformed json ({e.msg}, column {e.colno})"
                                  ) from None
            skipped["malformed json"] += 1
            continue
        yield f"{path}:{lineno}", row


def _jsonl_rows(path, skipped):
    with _open_text(path) as f:
        yield from _json_lines(path, f, skipped)


def _json_rows(path, skipped):
    with _open_text(path) as f:
        text = f.read()
    if not text.lstrip(_BOM + " \t\r\n").startswith("["):  # not a list: JSON Lines saved as .json
        yield from _json_lines(path, io.StringIO(text, newline=""), skipped)
        return
    bom = 3 if text.startswith(_BOM) else 0
    text = text[1:] if bom else text
    bad = _bad_byte(text)
    if bad is not None:  # one list: no record can be skipped without the others
        lineno = text.count("\n", 0, _ESCAPED.search(text).start()) + 1
        raise _not_utf8(f"{path}:{lineno}", bom + bad)
    try:
        items = json.loads(text)
    except json.JSONDecodeError as e:  # one broken list loses every record: always an error
        raise DataFormatError(f"{path}: malformed json at line {e.lineno}, column {e.colno} "
                              f"({e.msg})") from None
    for i, row in enumerate(items):
        yield f"{path}[item {i}]", row


def _parquet_rows(path, skipped):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        batches = pq.ParquetFile(path).iter_batches()
    except pa.ArrowInvalid as e:
        raise DataFormatError(f"{path}: not a readable parquet file ({e})") from None
    i = 0
    for batch in batches:  # batch by batch: a large file never sits in memory as Python dicts
        for row in batch.to_pylist():
            yield f"{path}:row {i}", row
            i += 1


def _csv_rows(path, skipped):
    bad: dict[int, int] = {}  # line number -> file offset of its first byte that is not UTF-8

    def lines(f):
        for lineno, start, line in _numbered(f):
            at = _bad_byte(line)
            if at is not None:
                bad[lineno] = start + at
            yield line

    def undecodable(last: int) -> Optional[RecordError]:
        hit = [n for n in bad if n <= last]  # `bad` is empty unless the file has such bytes
        if not hit:
            return None
        first = min(hit)
        error = _not_utf8(f"{path}:line {first}", bad[first])
        for n in hit:
            del bad[n]
        return error

    with _open_text(path) as f:
        reader = csv.DictReader(lines(f))
        if reader.fieldnames is None:  # reads the header, so that line_num counts from it
            return  # an empty file
        error = undecodable(reader.line_num)
        if error is not None:  # without its header no row can be read
            raise error
        start = reader.line_num + 1
        for row in reader:
            error = undecodable(reader.line_num)
            if error is None:
                yield f"{path}:line {start}", row
            elif skipped is None:
                raise error
            else:
                skipped[error.reason] += 1
            start = reader.line_num + 1  # a quoted field may span several lines


_READERS = {".jsonl": _jsonl_rows, ".json": _json_rows, ".parquet": _parquet_rows,
            ".csv": _csv_rows}


def read_rows(path: str, skipped: Optional[collections.Counter] = None
              ) -> Iterator[tuple[str, Any]]:
    """`(location, row)` for every record of a .jsonl(.gz), .json(.gz), .parquet or .csv(.gz) file.

    Malformed JSON lines and lines that are not UTF-8 raise `DataFormatError`, or are counted in
    `skipped` when it is given (a one-list .json file, or a CSV header, always raises).
    """
    path = str(path)
    gz = path.endswith(".gz")
    ext = os.path.splitext(path[:-3] if gz else path)[1].lower()
    if ext not in _READERS or (gz and ext == ".parquet"):
        raise DataFormatError(f"{path}: unsupported file type; use .jsonl, .jsonl.gz, .json, "
                              f".parquet or .csv")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"data file not found: {path}")
    if os.path.getsize(path) == 0:
        raise DataFormatError(f"{path}: the file is empty")
    return _READERS[ext](path, skipped)


def _is_blank(path: str) -> bool:
    """True if the text file at `path` (.gz decompressed) holds nothing but whitespace and a BOM."""
    if path.endswith(".parquet"):
        return False
    with _open_text(path) as f:
        return not f.read().lstrip(_BOM).strip()


# ---------------------------------------------------------------------------------------------
# Normalisers: row -> (prompt, chosen, rejected, meta)


def _require_str(value: Any, name: str) -> str:
    if value is None:
        raise RecordError(f"missing field '{name}'", f"field '{name}' is missing")
    if not isinstance(value, str):
        raise RecordError(f"non-string field '{name}'",
                          f"field '{name}' is {type(value).__name__}, not a string")
    return value


def _text(row: dict, key: str) -> str:
    return _require_str(row.get(key), key)


def _strip_one_space(s: str) -> str:
    return s[1:] if s.startswith(" ") else s


_ASSISTANT = "\n\nAssistant:"


def _hh_rlhf(row: dict, fields: FieldNames):
    chosen, rejected = _text(row, "chosen"), _text(row, "rejected")
    # The prompt is the dialogue up to the last assistant turn that both continue; a response
    # may itself contain "\n\nAssistant:", so step back until the prefix is shared.
    end = chosen.rfind(_ASSISTANT)
    while end >= 0 and not rejected.startswith(chosen[:end + len(_ASSISTANT)]):
        end = chosen.rfind(_ASSISTANT, 0, end)
    if end < 0:
        raise RecordError("chosen and rejected do not share a prompt")
    end += len(_ASSISTANT)
    return chosen[:end], _strip_one_space(chosen[end:]), _strip_one_space(rejected[end:]), {}


def _last_turn(messages: list, role: str, name: str) -> str:
    turns = [m.get("content") for m in messages if isinstance(m, dict) and m.get("role") == role]
    if not turns:
        raise RecordError(f"no {role} message in '{name}'")
    return _require_str(turns[-1], name)


def _ultrafeedback(row: dict, fields: FieldNames):
    # The shared files hold plain strings; the Hub's trl-lib rows hold chats whose last assistant
    # turn is the response and whose user turn is the prompt.
    chosen, rejected, prompt = row.get("chosen"), row.get("rejected"), row.get("prompt")
    if prompt is None and isinstance(chosen, list):
        prompt = _last_turn(chosen, "user", "prompt")
    if isinstance(chosen, list):
        chosen = _last_turn(chosen, "assistant", "chosen")
    if isinstance(rejected, list):
        rejected = _last_turn(rejected, "assistant", "rejected")
    # Scores sit under "metadata" in the shared files and at the top level on the Hub.
    scores = row["metadata"] if isinstance(row.get("metadata"), dict) else row
    meta = {k: scores[k] for k in ("score_chosen", "score_rejected", "noise")
            if scores.get(k) is not None}
    if row.get("source_index") is not None:
        meta["source_index"] = row["source_index"]
    return (_require_str(prompt, "prompt"), _require_str(chosen, "chosen"),
            _require_str(rejected, "rejected"), meta)


def _pku_saferlhf(row: dict, fields: FieldNames):
    prompt = _text(row, "prompt")
    if "response" in row:  # the shared file: [safer, less safe]
        pair = row["response"]
        if not (isinstance(pair, list) and len(pair) == 2):
            raise RecordError("bad field 'response'",
                              "field 'response' is not a [safer, less_safe] list of two")
        safer, less_safe = pair
        return (prompt, _require_str(safer, "response[0]"),
                _require_str(less_safe, "response[1]"), {})
    safer = row.get("safer_response_id")  # the Hub: response_0, response_1 and which is safer
    if safer is None:
        raise RecordError("missing field 'safer_response_id'",
                          "field 'safer_response_id' is missing")
    if safer not in (0, 1):
        raise RecordError("bad field 'safer_response_id'",
                          f"field 'safer_response_id' is {safer!r}, not 0 or 1")
    meta = {k: row[k] for k in ("safer_response_id", "better_response_id")
            if row.get(k) is not None}
    return prompt, _text(row, f"response_{safer}"), _text(row, f"response_{1 - safer}"), meta


def _rewardbench(row: dict, fields: FieldNames):
    subset = _text(row, "subset")  # results are reported per section: a subset is required
    meta = {"subset": subset, "section": REWARDBENCH_SECTIONS.get(subset)}
    return _text(row, "prompt"), _text(row, "chosen"), _text(row, "rejected"), meta


def _local(row: dict, fields: FieldNames):
    prompt = "" if fields.prompt is None else _text(row, fields.prompt)
    used = {fields.prompt, fields.chosen, fields.rejected, fields.id, None}
    # Other columns ride along in meta (a per-pair "margin", for instance, is read from there).
    meta = {k: v for k, v in row.items() if k not in used}
    return prompt, _text(row, fields.chosen), _text(row, fields.rejected), meta


NORMALISERS: dict[str, Callable[[dict, FieldNames], tuple]] = {
    "hh_rlhf": _hh_rlhf,
    "ultrafeedback": _ultrafeedback,
    "pku_saferlhf": _pku_saferlhf,
    "rewardbench": _rewardbench,
    "local": _local,
}


def check_pair(pair: PreferencePair) -> PreferencePair:
    """`pair` if a reward model can learn from it, else the `RecordError` that says why not."""
    for name in ("prompt", "chosen", "rejected"):  # an empty prompt is fine: some sets have none
        _require_str(getattr(pair, name), name)
    for name in ("chosen", "rejected"):
        if not getattr(pair, name).strip():
            raise RecordError("empty response", f"field '{name}' is empty")
    if pair.chosen == pair.rejected:  # no preference to learn, only noise in the loss
        raise RecordError("chosen identical to rejected", "chosen is identical to rejected")
    return pair


# ---------------------------------------------------------------------------------------------
# Loading


def _hub_rows(source, name, data_dir, subset, split):
    import datasets  # heavy, and only the Hub path needs it

    name = name or DEFAULT_HUB.get(source)
    if name is None:
        raise ValueError(f"source {source!r} needs a path (or a hub_name)")
    if source == "rewardbench" and split == "train":
        split = "filtered"  # RewardBench has no train split; "filtered" is the benchmark
    origin = (f"hub:{name}" + (f":{subset}" if subset else "")
              + (f"/{data_dir}" if data_dir else "") + f"[{split}]")
    rows = datasets.load_dataset(name, subset, data_dir=data_dir, split=split)
    return origin, ((f"{origin}:row {i}", row) for i, row in enumerate(rows))


def load_pairs(source: str, *, path: str | None = None, hub_name: str | None = None,
               hub_data_dir: str | None = None, hub_subset: str | None = None,
               split: str = "train", fields: FieldNames | None = None,
               on_error: str = "raise") -> LoadResult:
    """The pairs of `source`, read from `path` if given, else from the Hub (the same result).

    `fields` names the columns for ``source="local"``. Bad records raise `DataFormatError`
    (``on_error="raise"``) or are skipped, counted by reason and summed up in one warning.
    """
    if source not in NORMALISERS:
        raise ValueError(f"unknown data source {source!r}; one of {sorted(NORMALISERS)}")
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error={on_error!r} is not one of ['raise', 'skip']")
    skipped: collections.Counter = collections.Counter()
    if path is not None:
        origin = str(path)
        rows = read_rows(origin, skipped if on_error == "skip" else None)
    else:
        origin, rows = _hub_rows(source, hub_name, hub_data_dir, hub_subset, split)
    normalise, fields = NORMALISERS[source], fields or FieldNames()
    id_key = fields.id if source == "local" else "id"
    pairs = []
    for n, (location, row) in enumerate(rows):
        try:
            if not isinstance(row, dict):
                raise RecordError("not an object",
                                  f"record is {type(row).__name__}, not an object")
            prompt, chosen, rejected, meta = normalise(row, fields)
            row_id = row.get(id_key) if id_key else None
            pairs.append(check_pair(PreferencePair(
                id=f"{source}-{n}" if row_id is None else str(row_id), prompt=prompt,
                chosen=chosen, rejected=rejected, source=source, meta=meta)))
        except RecordError as e:
            if on_error == "raise":
                raise RecordError(e.reason, f"{location}: {e}") from None
            skipped[e.reason] += 1
    reasons = ", ".join(f"{count} {reason}" for reason, count in skipped.most_common())
    if not pairs:
        if path is not None and not skipped and _is_blank(origin):
            raise DataFormatError(f"{origin}: the file is empty")
        raise DataFormatError(f"{origin}: no usable record ("
                              + (f"{sum(skipped.values())} skipped: {reasons})" if skipped
                                 else "it holds no records)"))
    if skipped:
        log.warning(f"skipped {sum(skipped.values())} of {len(pairs) + sum(skipped.values())} "
                    f"records in {origin}: {reasons}")
    return LoadResult(pairs, skipped, origin)


__all__ = ["LoadResult", "load_pairs", "read_rows", "check_pair", "NORMALISERS", "DEFAULT_HUB",
           "REWARDBENCH_SECTIONS", "RecordError"]
