"""PairEncoder: text format, special tokens, the truncation rule and its count (encoding.py docstring)."""
from __future__ import annotations

import random

import pytest

from mars.config import BackboneConfig
from mars.data.encoding import HH_PREFIX, PairEncoder, format_prompt
from mars.data.records import PreferencePair
from mars.model.backbone import load_tokenizer

CLS, SEP = 101, 102  # MiniLM (BERT uncased) wraps every sequence as [CLS] … [SEP]


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(BackboneConfig())


def ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def words(prefix: str, n: int) -> str:
    return " ".join(f"{prefix}{i}" for i in range(n))


def pair(prompt: str, chosen: str, rejected: str = "no") -> PreferencePair:
    return PreferencePair("x", prompt, chosen, rejected)


def response_text(p: PreferencePair, text: str) -> str:
    return " " + text if p.prompt else text


def test_format_prompt():
    assert format_prompt("What is 2+2?") == "\n\nHuman: What is 2+2?\n\nAssistant:"
    hh = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: bye\n\nAssistant:"
    assert format_prompt(hh) == hh
    assert format_prompt("") == ""
    assert format_prompt("Human: no leading blank line").startswith(HH_PREFIX + " Human:")


def test_special_tokens(tok):
    enc = PairEncoder(tok, max_length=64)
    assert (enc.prefix, enc.suffix, enc.budget) == ([CLS], [SEP], 62)


@pytest.mark.parametrize("prompt", ["What is the capital of France?",
                                    "\n\nHuman: What is the capital of France?\n\nAssistant:"])
def test_plain_and_hh_prompts_encode_alike(tok, prompt):
    enc = PairEncoder(tok, max_length=64)
    [e] = enc.encode([pair(prompt, "Paris.", "London.")])
    head = ids(tok, "\n\nHuman: What is the capital of France?\n\nAssistant:")
    assert e.chosen == [CLS] + head + ids(tok, " Paris.") + [SEP]
    assert e.rejected == [CLS] + head + ids(tok, " London.") + [SEP]
    assert e.index == 0 and e.length == len(e.chosen) and enc.truncated == 0


def test_empty_prompt_is_response_only(tok):
    [e] = PairEncoder(tok, max_length=64).encode([pair("", "just text", "other")])
    assert e.chosen == [CLS] + ids(tok, "just text") + [SEP]


def test_prompt_cut_from_left_first(tok):
    prompt, response = words("p", 40), "the final answer"
    head, resp = ids(tok, format_prompt(prompt)), ids(tok, " " + response)
    max_length, budget = 40, 38
    assert len(head) + len(resp) > budget and budget - len(resp) > 8  # prompt alone absorbs the cut
    enc = PairEncoder(tok, max_length, min_prompt_tokens=8)
    [e] = enc.encode([pair(prompt, response, "ok")])
    keep = budget - len(resp)
    assert e.chosen == [CLS] + head[-keep:] + resp + [SEP]  # latest turn kept, response whole
    assert len(e.chosen) == max_length
    ok = ids(tok, " ok")
    assert e.rejected == [CLS] + head[-(budget - len(ok)):] + ok + [SEP]
    assert enc.truncated == 1


def test_response_cut_from_left_after_prompt_floor(tok):
    prompt, response = words("p", 40), words("r", 60)
    head, resp = ids(tok, format_prompt(prompt)), ids(tok, " " + response)
    enc = PairEncoder(tok, max_length=48, min_prompt_tokens=10)
    [e] = enc.encode([pair(prompt, response)])
    # prompt down to its last 10 tokens, then the response keeps its END
    assert e.chosen == [CLS] + head[-10:] + resp[-(46 - 10):] + [SEP]
    assert len(e.chosen) == 48


def test_short_prompt_kept_whole(tok):
    prompt, response = "hi", words("r", 80)
    head, resp = ids(tok, format_prompt(prompt)), ids(tok, " " + response)
    assert len(head) < 32
    [e] = PairEncoder(tok, max_length=64, min_prompt_tokens=32).encode([pair(prompt, response)])
    assert e.chosen == [CLS] + head + resp[-(62 - len(head)):] + [SEP]


@pytest.mark.parametrize("max_length,min_prompt", [(8, 0), (16, 4), (32, 16), (32, 64), (64, 62), (64, 16)])
def test_never_too_long_never_dropped(tok, max_length, min_prompt):
    rng = random.Random(max_length + min_prompt)
    pairs = [pair(words("p", rng.randint(0, 50)), words("c", rng.randint(1, 50)), words("j", rng.randint(1, 50)))
             for _ in range(30)]
    enc = PairEncoder(tok, max_length, min_prompt_tokens=min_prompt)
    out = enc.encode(pairs)
    assert [e.index for e in out] == list(range(len(pairs)))
    for p, e in zip(pairs, out):
        for seq, text in ((e.chosen, p.chosen), (e.rejected, p.rejected)):
            assert len(seq) <= max_length
            assert seq[0] == CLS and seq[-1] == SEP
            full = [CLS] + ids(tok, format_prompt(p.prompt)) + ids(tok, response_text(p, text)) + [SEP]
            assert len(seq) == min(len(full), max_length)  # cut only as far as needed
            if min(len(ids(tok, format_prompt(p.prompt))), min_prompt) < max_length - 2:
                assert seq[-2] == full[-2]  # room for a response: its last token stays visible
    expected = sum(len(ids(tok, format_prompt(p.prompt))) + max(len(ids(tok, response_text(p, t)))
                                                               for t in (p.chosen, p.rejected)) > max_length - 2
                   for p in pairs)
    assert enc.truncated == expected


def test_truncated_counts_pairs_with_either_side_cut(tok):
    enc = PairEncoder(tok, max_length=32, min_prompt_tokens=8)
    short, long_ = "short answer", words("w", 40)
    enc.encode([pair("q?", short, short),      # neither side cut
                pair("q?", short, long_),      # rejected only
                pair("q?", long_, short),      # chosen only
                pair("q?", long_, long_)])     # both: still one pair
    assert enc.truncated == 3
    enc.encode([pair("q?", long_, short)])
    assert enc.truncated == 4  # counts since creation


class CountingTokenizer:
    """Delegates to a tokenizer and records the texts it was asked to tokenise."""

    def __init__(self, tok):
        self.tok, self.texts = tok, []

    def __call__(self, texts, **kw):
        self.texts += [texts] if isinstance(texts, str) else list(texts)
        return self.tok(texts, **kw)


def test_memoisation_identical_ids_and_no_retokenising(tok):
    pairs = [pair(words("p", 5), "yes indeed", "no"), pair(words("p", 5), "no", "yes indeed"),
             pair("other", words("c", 70), "no")]
    counting = CountingTokenizer(tok)
    enc = PairEncoder(counting, max_length=32, min_prompt_tokens=8)
    first = enc.encode(pairs)
    seen = len(counting.texts)
    again = enc.encode(pairs)
    assert len(counting.texts) == seen  # every text came from the memo
    fresh = PairEncoder(tok, max_length=32, min_prompt_tokens=8).encode(pairs)
    assert [(e.chosen, e.rejected) for e in first] == [(e.chosen, e.rejected) for e in again] \
        == [(e.chosen, e.rejected) for e in fresh]
    assert first[0].chosen == first[1].rejected  # the same text gives the same ids in either role
