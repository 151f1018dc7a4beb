"""mars.generation: stable seeds and cache keys, the endpoint client's retries against a local
server with injected faults, and the per-row sampler of local generation."""
from __future__ import annotations

import json
import logging

import torch

from mars.augmenters.eda import EDAAugmenter
from mars.evaluation.judge import ChatJudge
from mars.evaluation.policy import EndpointPolicy
from mars.generation import local
from mars.generation.cache import digest
from mars.generation.endpoint import ChatEndpoint, Reply
from mars.generation.seeding import stable_seed
from test_augmenter_llm import SECRET, serve  # noqa: F401 (serve: a fixture)


def test_seeds_and_cache_keys_are_fixed():
    assert stable_seed("text", 3) == stable_seed("text", 3) != stable_seed("text", 4)
    assert stable_seed("x") == 1695005361  # fixed across processes and Python versions
    # the keys of existing caches: a change here makes every cached text unreachable
    assert digest("x") == "442a44457137672b3218c1007dc8f76a"
    assert EDAAugmenter(seed=3).identity_digest() == "1d86bae232b86be5949c187ea87ddad2"
    assert EndpointPolicy(model="served", n=2).identity_digest() == "021c8534ebd522abba0c72f77fc31ff6"
    assert ChatJudge(model="judge").identity_digest() == "dd1352e6eb859141123cf5302fe204e0"


def chat(text: str) -> list[dict]:
    return [{"role": "user", "content": f"ASK\n{text}\n=====\n\n=====\n"}]  # the fake server's layout


def faulty(role, text, other, body, attempt):
    if text == "RATE" and attempt == 0:
        return 429, {"Retry-After": "1"}, '{"error": "slow down"}'
    if text == "DATE" and attempt == 0:  # a date, not seconds: the backoff applies
        return 503, {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, "busy"
    if text == "FIVE" and attempt < 2:
        return 500, {}, "internal error"
    if text == "DOWN":
        return 503, {}, "unavailable"
    if text == "KEY":
        return 401, {}, json.dumps({"error": f"invalid key {SECRET}"})
    choice = {"index": 0, "message": {"role": "assistant", "content": f"re {text}"},
              "finish_reason": "length" if text == "CUT" else "stop"}
    return 200, {}, json.dumps({"choices": [choice], "usage": {"completion_tokens": 3}})


def test_endpoint_retries_backs_off_and_reports(serve, monkeypatch, caplog):
    monkeypatch.setenv("MARS_TEST_KEY", SECRET)
    caplog.set_level(logging.WARNING)
    server = serve(faulty)
    client = ChatEndpoint("fake-model", server.url + "/", "MARS_TEST_KEY", max_tokens=7,
                          max_retries=2, backoff=0.01, timeout=2.0)
    names = ["plain", "RATE", "DATE", "FIVE", "DOWN", "KEY", "CUT"]
    replies = dict(zip(names, client.complete([(chat(n), 0.5, k) for k, n in enumerate(names)])))
    assert replies["plain"] == Reply("re plain", 0, 3, False)
    assert replies["RATE"] == Reply("re RATE", 1, 3, False)
    assert replies["DATE"] == Reply("re DATE", 1, 3, False)
    assert replies["FIVE"] == Reply("re FIVE", 2, 3, False)
    assert replies["DOWN"] == Reply(None, 2) and len(server.requests_for("DOWN")) == 1 + 2
    assert replies["KEY"] == Reply(None, 0) and len(server.requests_for("KEY")) == 1  # not retried
    assert replies["CUT"] == Reply("re CUT", 0, 3, True)
    rate = sorted(r["time"] for r in server.requests_for("RATE"))
    assert rate[-1] - rate[0] >= 0.95  # Retry-After: 1 was honoured
    date = sorted(r["time"] for r in server.requests_for("DATE"))
    assert date[-1] - date[0] < 0.9
    sent = server.requests_for("plain")[0]
    assert sent["path"] == "/v1/chat/completions"
    assert sent["headers"]["Authorization"] == f"Bearer {SECRET}"
    assert {k: sent["body"][k] for k in ("model", "temperature", "max_tokens", "seed")} == {
        "model": "fake-model", "temperature": 0.5, "max_tokens": 7, "seed": 0}
    messages = [r.getMessage() for r in caplog.records]
    assert any("HTTP 401" in m and "***" in m for m in messages)  # the body, with the key masked
    assert any("giving up after 2 retries (HTTP 503)" in m for m in messages)
    assert all(SECRET not in m for m in messages)
    assert client.complete([]) == []


def test_row_sampler_draws_each_row_on_its_own():
    torch.manual_seed(0)
    logits = torch.randn(3, 50)

    def draw(rows: list[int], steps: int = 20, **kw) -> list[list[int]]:
        processor = local.sampling(1.3, [100 + r for r in rows], "cpu", **kw)["logits_processor"][0]
        out = [processor(None, logits[rows]).argmax(-1).tolist() for _ in range(steps)]
        return [list(t) for t in zip(*out)]

    together = draw([0, 1, 2])
    assert draw([2]) == [together[2]] and draw([1, 0]) == [together[1], together[0]]
    assert len(set(together[0])) > 1  # sampled, not greedy
    top3 = set(logits[0].topk(3).indices.tolist())
    assert set(draw([0], top_k=3)[0]) <= top3
    nucleus = draw([0], top_k=0, top_p=1e-6)[0]  # the smallest set with any mass: the argmax
    assert set(nucleus) == {int(logits[0].argmax())}
    assert local.sampling(0.0, [1], "cpu") == {"do_sample": False}


def test_batches_sort_by_length_within_groups():
    lengths = [5, 1, 4, 1, 3, 2]
    assert local.batches(lengths, 2) == [[1, 3], [5, 4], [2, 0]]
    assert local.batches(lengths, 3, groups=[0.7, 0.9, 0.7, 0.7, 0.9, 0.7]) == [[3, 5, 2], [0], [1, 4]]
    assert local.batches([], 4) == []
