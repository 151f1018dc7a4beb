"""`python -m mars.serve` on a free local port: rewards equal to eval.py's through a real HTTP
client, OpenRLHF's body and answer, each bad request's status and message (the server keeps
serving), concurrent clients, the bearer token, TRL's reward function, shutdown."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from mars.data.demo import demo_splits
from mars.data.format import hh_messages
from mars.evaluation.models import load_scorer
from mars.model.export import export_reward_model
from mars.serve.client import RemoteReward
from mars.serve.protocol import RequestError, parse_request
from tests.test_eval import build

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "test-token-not-a-secret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve")
    module = build("tiny_llama", "full", folder)
    with torch.no_grad():  # rewards that differ between responses, of moderate size (float noise ~1e-7)
        module.model.head.weight.mul_(30.0)
    export = export_reward_model(module, str(folder / "export"))
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MARS_TEST_SERVE_TOKEN": TOKEN}
    process = subprocess.Popen([sys.executable, "-m", "mars.serve", f"model={export}", f"port={port}",
                                "accelerator=cpu", "max_items=16", "max_body_bytes=20000", "max_batch_size=4",
                                "token_env=MARS_TEST_SERVE_TOKEN", f"hydra.run.dir={folder / 'run'}"],
                               cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(240):
        try:
            if httpx.get(f"{url}/health", timeout=1).text == "ok":
                break
        except httpx.TransportError:
            pass
        assert process.poll() is None, process.stdout.read()[-3000:]
        time.sleep(0.5)
    yield {"url": url, "export": export, "process": process}
    process.terminate()
    process.wait(timeout=30)


def post(served, body, token=TOKEN):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.post(f"{served['url']}/score", json=body, headers=headers, timeout=60)


PAIRS = demo_splits(40, 10, 12, seed=0)["test"]


def test_rewards_equal_eval_pys(served):
    ours = load_scorer(served["export"]).responses([(p.prompt, p.chosen) for p in PAIRS])
    answer = post(served, {"items": [{"prompt": p.prompt, "response": p.chosen} for p in PAIRS]}).json()
    np.testing.assert_allclose(answer["rewards"], ours, rtol=1e-5, atol=1e-5)
    assert answer["truncated"] == 0 and np.std(ours) > 1e-2
    first = post(served, {"prompt": PAIRS[0].prompt, "responses": [PAIRS[0].chosen, PAIRS[0].rejected]}).json()
    pairs = post(served, {"pairs": [{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}
                                    for p in PAIRS[:3]]}).json()
    chats = post(served, {"conversations": [hh_messages(p.prompt) + [{"role": "assistant", "content": p.chosen}]
                                            for p in PAIRS]}).json()
    np.testing.assert_allclose(chats["rewards"], ours, rtol=1e-5, atol=1e-5)
    assert first["rewards"][0] == pytest.approx(ours[0], rel=1e-5)
    assert pairs["margins"][0] == pytest.approx(first["rewards"][0] - first["rewards"][1], rel=1e-5, abs=1e-4)


def test_openrlhf_body_gets_openrlhfs_answer(served):
    scorer = load_scorer(served["export"])
    texts = ["".join(scorer.formatter.texts(p.prompt, p.chosen)) for p in PAIRS[:4]]  # rendered by the policy
    answer = post(served, {"query": texts, "prompts": [p.prompt for p in PAIRS[:4]], "labels": [None] * 4}).json()
    np.testing.assert_allclose(answer["rewards"], scorer.responses([(p.prompt, p.chosen) for p in PAIRS[:4]]),
                               rtol=1e-5, atol=1e-5)


def test_an_overlong_text_is_truncated_and_counted(served):
    answer = post(served, {"prompt": "Tell me a story.", "responses": ["once upon a time " * 200, "The end."]})
    assert answer.status_code == 200 and answer.json()["truncated"] == 1


@pytest.mark.parametrize("body,status,message", [
    ({"responses": ["a"]}, 422, "'prompt' (a string) must come with 'responses'"),
    ({"prompt": "x", "responses": "a"}, 422, "'responses' must be a list of strings, got str"),
    ({"prompt": "x", "responses": ["ok", 3]}, 422, "'responses[1]' must be a string, got int"),
    ({"prompt": "x", "responses": ["ok", " "]}, 422, "'responses[1]' is empty"),
    ({"pairs": [{"prompt": "x", "chosen": "a"}]}, 422, "'pairs[0]' has no 'rejected'"),
    ({"query": []}, 422, "nothing to score"),
    ({"conversations": [[{"role": "user", "content": "hi"}]]}, 422, "must end with the assistant's response"),
    ({"texts": ["a"]}, 422, "the body needs 'query'"),
    ({"query": ["a"] * 17}, 413, "17 sequences in one request, more than serve.max_items=16"),
    ({"query": ["a" * 30000]}, 413, "over serve.max_body_bytes=20000"),
])
def test_bad_requests_are_named_and_the_server_keeps_serving(served, body, status, message):
    answer = post(served, body)
    assert answer.status_code == status and message in answer.json()["detail"]
    assert post(served, {"prompt": "x", "responses": ["fine"]}).status_code == 200


def test_a_body_that_is_not_json_and_a_missing_token(served):
    answer = httpx.post(f"{served['url']}/score", content=b"{not json", headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 400 and "not JSON" in answer.json()["detail"]
    assert post(served, {"query": ["a"]}, token=None).status_code == 401
    assert post(served, {"query": ["a"]}, token="wrong").status_code == 401
    assert httpx.get(f"{served['url']}/health").status_code == 200  # health needs no token


def test_concurrent_clients_each_get_their_own_rewards(served):
    ours = load_scorer(served["export"]).responses([(p.prompt, p.chosen) for p in PAIRS])
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: post(served, {"prompt": PAIRS[i].prompt, "responses": [PAIRS[i].chosen]}),
                                range(len(PAIRS))))
    got = [a.json()["rewards"][0] for a in answers]
    np.testing.assert_allclose(got, ours, rtol=1e-5, atol=1e-5)


def test_trl_reward_function_scores_strings_and_conversations(served, monkeypatch):
    monkeypatch.setenv("MARS_TEST_SERVE_TOKEN", TOKEN)
    reward = RemoteReward(f"{served['url']}/score", token_env="MARS_TEST_SERVE_TOKEN")
    ours = load_scorer(served["export"]).responses([(p.prompt, p.chosen) for p in PAIRS[:3]])
    plain = reward([p.prompt for p in PAIRS[:3]], [p.chosen for p in PAIRS[:3]])
    chat = reward([hh_messages(p.prompt) for p in PAIRS[:3]],
                  [[{"role": "assistant", "content": p.chosen}] for p in PAIRS[:3]])
    np.testing.assert_allclose(plain, ours, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(chat, ours, rtol=1e-5, atol=1e-5)


def test_a_failing_server_is_retried_and_reported():
    reward = RemoteReward(f"http://127.0.0.1:{free_port()}/score", retries=2, backoff=0.01, timeout=1)
    with pytest.raises(RuntimeError, match="failed 3 times"):
        reward(["x"], ["y"])


def test_requests_are_checked_without_a_server():
    with pytest.raises(RequestError, match="'items\\[0\\].response' is empty"):
        parse_request({"items": [{"prompt": "x", "response": ""}]}, 8)
    assert parse_request({"query": ["a", "b"], "labels": [1, 2]}, 8).rows == ["a", "b"]


def test_shutdown_ends_every_worker(served):
    import psutil

    workers = psutil.Process(served["process"].pid).children(recursive=True)
    assert workers  # LitServe's inference and API workers
    served["process"].terminate()
    assert served["process"].wait(timeout=60) is not None
    gone, alive = psutil.wait_procs(workers, timeout=30)
    assert not alive
