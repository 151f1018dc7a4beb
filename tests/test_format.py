"""PairFormatter: text format (chat templates, mars's own HH format), special tokens, the
truncation rule and its count (format.py docstring)."""
from __future__ import annotations

import random

import pytest

from mars.config import BackboneConfig
from mars.data.format import PairFormatter, TemplateError, hh_messages, split_uninformative
from mars.data.records import PreferencePair
from mars.model.backbone import load_tokenizer

CLS, SEP = 101, 102  # MiniLM (BERT uncased) wraps every sequence as [CLS] … [SEP]


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(BackboneConfig())


@pytest.fixture(scope="module")
def smol():
    return load_tokenizer(BackboneConfig(name_or_path="smollm2"))


def ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def words(prefix: str, n: int) -> str:
    return " ".join(f"{prefix}{i}" for i in range(n))


def pair(prompt: str, chosen: str, rejected: str = "no") -> PreferencePair:
    return PreferencePair("x", prompt, chosen, rejected)


def format_prompt(prompt: str) -> str:
    """mars's own format of a prompt, written out by hand (HH strings stay as they are)."""
    return prompt if prompt.startswith("\n\nHuman:") else f"\n\nHuman: {prompt}\n\nAssistant:" if prompt \
        else "\n\nAssistant:"


def response_text(p: PreferencePair, text: str) -> str:
    return " " + text


def test_hh_dialogues_parse_turn_by_turn_with_every_paragraph():
    hh = "\n\nHuman: first line\n\nsecond paragraph\n\nAssistant: an answer\n\nin two parts\n\nHuman: bye\n\nAssistant:"
    assert hh_messages(hh) == [{"role": "user", "content": "first line\n\nsecond paragraph"},
                               {"role": "assistant", "content": "an answer\n\nin two parts"},
                               {"role": "user", "content": "bye"}]
    assert hh_messages("What is 2+2?") == [{"role": "user", "content": "What is 2+2?"}]
    assert hh_messages("") == []


def test_special_tokens(tok):
    enc = PairFormatter(tok, max_length=64)
    assert (enc.prefix, enc.suffix) == ([CLS], [SEP])


@pytest.mark.parametrize("prompt", ["What is the capital of France?",
                                    "\n\nHuman: What is the capital of France?\n\nAssistant:"])
def test_plain_and_hh_prompts_encode_alike(tok, prompt):
    enc = PairFormatter(tok, max_length=64)
    [e] = enc.encode([pair(prompt, "Paris.", "London.")])
    head = ids(tok, "\n\nHuman: What is the capital of France?\n\nAssistant:")
    assert e.chosen == [CLS] + head + ids(tok, " Paris.") + [SEP]
    assert e.rejected == [CLS] + head + ids(tok, " London.") + [SEP]
    assert e.index == 0 and e.length == len(e.chosen) and enc.truncated == 0


def test_own_format_is_the_exported_chat_template(tok):
    """The text mars scores is what apply_chat_template renders: RewardBench's path agrees."""
    hh = "\n\nHuman: hi\n\nthere\n\nAssistant: hello\n\nHuman: and?\n\nAssistant:"
    [e] = PairFormatter(tok, max_length=256).encode([pair(hh, "fine\n\nthanks", "no")])
    text = tok.apply_chat_template(hh_messages(hh) + [{"role": "assistant", "content": "fine\n\nthanks"}],
                                   tokenize=False)
    assert text == hh + " fine\n\nthanks"
    assert e.chosen == tok(text)["input_ids"]


def test_empty_prompt_is_one_assistant_turn(tok):
    [e] = PairFormatter(tok, max_length=64).encode([pair("", "just text", "other")])
    assert e.chosen == [CLS] + ids(tok, "\n\nAssistant: just text") + [SEP]


def test_chat_template_keeps_every_paragraph(smol):
    hh = "\n\nHuman: line one\n\nline two\n\nAssistant:"
    [e] = PairFormatter(smol, max_length=256).encode([pair(hh, "ok", "no")])
    text = smol.decode(e.chosen)
    assert "line one\n\nline two<|im_end|>" in text and text.endswith("<|im_start|>assistant\nok<|im_end|>\n")
    assert e.chosen == smol(smol.apply_chat_template(hh_messages(hh) + [{"role": "assistant", "content": "ok"}],
                                                     tokenize=False))["input_ids"]


def test_template_that_trims_content(smol):
    """A Llama-3-style template edits the text (strips it): the response is still found by
    construction, and the prompt stays whole."""
    trimming = smol.__class__.from_pretrained(smol.name_or_path)
    trimming.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] | trim }}<|im_end|>\n"
                              "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    [e] = PairFormatter(trimming, max_length=256).encode([pair("  what?  ", "  fine  ", "no")])
    assert trimming.decode(e.chosen) == "<|im_start|>user\nwhat?<|im_end|>\n<|im_start|>assistant\nfine<|im_end|>\n"


def test_template_that_starts_with_bos_is_not_doubled(tok):
    bos = tok.__class__.from_pretrained(tok.name_or_path)
    bos.chat_template = ("[CLS]{% for m in messages %}{{ m['role'] }}: {{ m['content'] }} {% endfor %}"
                         "{% if add_generation_prompt %}assistant: {% endif %}")
    [e] = PairFormatter(bos, max_length=64).encode([pair("hi", "ok", "no")])
    assert e.chosen[:2] != [CLS, CLS] and e.chosen[0] == CLS and e.chosen.count(CLS) == 1


def test_template_whose_prompt_is_no_prefix_is_named(tok):
    odd = tok.__class__.from_pretrained(tok.name_or_path)
    odd.chat_template = ("{% for m in messages %}{{ m['content'] }}{% endfor %}"
                         "{% if add_generation_prompt %}<reply>{% endif %}")
    with pytest.raises(TemplateError, match="not a prefix of the conversation"):
        PairFormatter(odd, max_length=64).encode([pair("hi", "ok", "no")])


def test_prompt_cut_from_left_first(tok):
    prompt, response = words("p", 40), "the final answer"
    head, resp = ids(tok, format_prompt(prompt)), ids(tok, " " + response)
    max_length, budget = 40, 38
    assert len(head) + len(resp) > budget and budget - len(resp) > 8  # prompt alone absorbs the cut
    enc = PairFormatter(tok, max_length, min_prompt_tokens=8)
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
    enc = PairFormatter(tok, max_length=48, min_prompt_tokens=10)
    [e] = enc.encode([pair(prompt, response)])
    # prompt down to its last 10 tokens, then the response keeps its END
    assert e.chosen == [CLS] + head[-10:] + resp[-(46 - 10):] + [SEP]
    assert len(e.chosen) == 48


def test_short_prompt_kept_whole(tok):
    prompt, response = "hi", words("r", 80)
    head, resp = ids(tok, format_prompt(prompt)), ids(tok, " " + response)
    assert len(head) < 32
    [e] = PairFormatter(tok, max_length=64, min_prompt_tokens=32).encode([pair(prompt, response)])
    assert e.chosen == [CLS] + head + resp[-(62 - len(head)):] + [SEP]


@pytest.mark.parametrize("max_length,min_prompt", [(8, 0), (16, 4), (32, 16), (32, 64), (64, 62), (64, 16)])
def test_never_too_long_never_dropped(tok, max_length, min_prompt):
    rng = random.Random(max_length + min_prompt)
    pairs = [pair(words("p", rng.randint(0, 50)), words("c", rng.randint(1, 50)), words("j", rng.randint(1, 50)))
             for _ in range(30)]
    enc = PairFormatter(tok, max_length, min_prompt_tokens=min_prompt)
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
    enc = PairFormatter(tok, max_length=32, min_prompt_tokens=8)
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

    def __getattr__(self, name):
        return getattr(self.tok, name)


def test_memoisation_identical_ids_and_no_retokenising(tok):
    pairs = [pair(words("p", 5), "yes indeed", "no"), pair(words("p", 5), "no", "yes indeed"),
             pair("other", words("c", 70), "no")]
    counting = CountingTokenizer(tok)
    enc = PairFormatter(counting, max_length=32, min_prompt_tokens=8)
    first = enc.encode(pairs)
    seen = len(counting.texts)
    again = enc.encode(pairs)
    assert len(counting.texts) == seen  # every text came from the memo
    fresh = PairFormatter(tok, max_length=32, min_prompt_tokens=8).encode(pairs)
    assert [(e.chosen, e.rejected) for e in first] == [(e.chosen, e.rejected) for e in again] \
        == [(e.chosen, e.rejected) for e in fresh]
    assert first[0].chosen == first[1].rejected  # the same text gives the same ids in either role


def differ_early(shared_words: int) -> PreferencePair:
    """Answers that differ only in their opening sentence, then one long shared text."""
    shared = " " + words("s", shared_words)
    return PreferencePair("early", "why?", "Because it is true." + shared, "Nobody knows." + shared)


def test_truncation_that_cuts_the_difference_flags_the_pair_and_keep_start_keeps_it(tok):
    cut = PairFormatter(tok, max_length=48, min_prompt_tokens=4)
    [e] = cut.encode([differ_early(80)])
    assert e.truncated == (True, True) and e.chosen == e.rejected and e.uninformative
    assert split_uninformative([e]) == ([], [0])
    start = PairFormatter(tok, max_length=48, min_prompt_tokens=4, truncation="keep_start")
    [k] = start.encode([differ_early(80)])
    assert k.truncated == (True, True) and not k.uninformative and len(k.chosen) == len(k.rejected) == 48
    assert ids(tok, " because it is true")[0] in k.chosen and k.chosen[-1] == SEP  # the opening and [SEP] stay
    [whole] = cut.encode([differ_early(10)])  # short enough: nothing cut, the pair counts
    assert whole.truncated == (False, False) and not whole.uninformative


def test_truncation_choice_is_checked():
    from mars.config import ConfigError

    with pytest.raises(ConfigError, match="backbone.truncation='middle'"):
        BackboneConfig(truncation="middle")
