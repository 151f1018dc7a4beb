"""The alignment stage (mars.align): a tiny random policy aligned with tiny reward models through
TRL, resumed, judged from cached answers; bad configurations named before any training."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from omegaconf import open_dict

from mars.align.judging import START, matchups, outcome
from mars.align.prompts import Prompts, check_heldout
from mars.align.stage import align
from mars.align.trainer import fit_prompt, prompt_tokens
from mars.config import ConfigError
from tests.conftest import compose_config
from tests.test_augmenter_llm import smollm2, tiny_chat_model  # noqa: F401  (fixtures)
from tests.test_own_prompts import tiny_export

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def rms(tmp_path_factory) -> dict[str, str]:
    """Two tiny random proxies and a gold reward model (mars exports)."""
    return {name: tiny_export(tmp_path_factory.mktemp(name), seed) for seed, name in enumerate(("a", "b", "gold"))}


def config(tmp_path: Path, policy: str, rms: dict[str, str], *more: str):
    return compose_config("align", [
        f"start_policy={policy}", f"+reward_models.a={rms['a']}", f"+reward_models.b={rms['b']}", f"gold={rms['gold']}",
        "data=demo", "prompts.train=8", "prompts.heldout=6", "rl.max_steps=2", "rl.prompts_per_step=2",
        "rl.completions_per_prompt=2", "rl.max_new_tokens=6", "rl.save_steps=1", "rl.max_prompt_tokens=48",
        "lora.r=2", "lora.alpha=4", "report_to=[]", "answers.max_new_tokens=6", "bootstrap=200", *more],
        tmp_path)


@pytest.mark.slow
def test_align_judge_report_and_resume(tiny_chat_model, rms, tmp_path):  # noqa: F811
    cfg = config(tmp_path, tiny_chat_model, rms)
    result = align(cfg)
    out = Path(cfg.output_dir)
    for name in ("a", "b"):
        folder = out / "policies" / name
        steps = [json.loads(line) for line in (folder / "steps.jsonl").read_text().splitlines()]
        assert [s["step"] for s in steps] == [1, 2]
        assert all(np.isfinite(s["rewards/proxy/mean"]) and "rewards/gold/mean" in s for s in steps)
        assert (folder / "policy" / "config.json").exists() and (folder / "adapter" / "adapter_config.json").exists()
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(out / "policies" / "a" / "policy")  # a from_pretrained folder
    assert [(m["a"], m["b"]) for m in result["matchups"]] == [("a", START), ("b", START), ("a", "b")]
    for m in result["matchups"]:
        assert m["win"] + m["tie"] + m["lose"] == 6 and m["win_rate"]["lo"] <= m["win_rate"]["value"] <= m["win_rate"]["hi"]
    # the gold judge's verdicts agree with the gold rewards it reports
    gold = {n: p["gold"]["value"] for n, p in result["policies"].items()}
    assert set(gold) == {START, "a", "b"} and "proxy" in result["policies"]["a"]
    a = result["policies"]["a"]
    assert a["path"] == "policies/a/policy" and a["reward_model"] == rms["a"]  # portable: the folder moves whole
    assert result["policies"][START]["path"] == tiny_chat_model  # as given
    rows = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and set(rows[0]) == {"id", "prompt", START, "a", "b"}
    assert "| a | start |" in (out / "report.md").read_text() and (out / "training_curves.png").exists()

    # resume: policy a loses its final folder and trains on to step 3 from its step-2 checkpoint
    shutil.rmtree(out / "policies" / "a" / "policy")
    with open_dict(cfg):
        cfg.rl.max_steps = 3
    again = align(cfg)
    steps = [json.loads(line)["step"] for line in (out / "policies" / "a" / "steps.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]  # continued at the checkpoint's step, nothing logged twice
    assert (out / "policies" / "b" / "steps.jsonl").read_text().count("\n") == 2  # b was finished: not retrained
    b_vs_start = [m for m in again["matchups"] if (m["a"], m["b"]) == ("b", START)]
    assert b_vs_start == [m for m in result["matchups"] if (m["a"], m["b"]) == ("b", START)]  # from the cache


def test_bad_configurations_are_named_before_training(tiny_chat_model, rms, tmp_path):  # noqa: F811
    not_rm = tmp_path / "not_rm"
    not_rm.mkdir()
    (not_rm / "notes.txt").write_text("x")
    with pytest.raises(ConfigError, match=r"reward_models.a=.*not_rm is not a reward model"):
        align(config(tmp_path, tiny_chat_model, {**rms, "a": str(not_rm)}))
    with pytest.raises(ConfigError, match=r"reward_models.a=.* is not a reward model: its architectures are "
                                          r"\['LlamaForCausalLM'\]"):
        align(config(tmp_path, tiny_chat_model, {**rms, "a": tiny_chat_model}))
    plain = tmp_path / "plain"
    shutil.copytree(tiny_chat_model, plain)
    tok = json.loads((plain / "tokenizer_config.json").read_text())
    tok.pop("chat_template", None)
    (plain / "tokenizer_config.json").write_text(json.dumps(tok))
    for f in plain.glob("chat_template.*"):
        f.unlink()
    with pytest.raises(ConfigError, match="has no chat template"):
        align(config(tmp_path, str(plain), rms))
    with pytest.raises(ConfigError, match="rl.algorithm=ppo: TRL .* has no PPOTrainer"):
        align(config(tmp_path, tiny_chat_model, rms, "rl.algorithm=ppo"))
    held = tmp_path / "held.jsonl"
    demo_train = compose_config("align", ["data=demo"], tmp_path)  # the training prompts of data=demo
    from mars.align.prompts import load_prompts_for
    from mars.config import typed

    first = load_prompts_for(typed(demo_train, "data"), 8, 6).train[0]
    held.write_text(json.dumps({"id": "leak", "prompt": first}) + "\n" + json.dumps({"prompt": "new"}) + "\n")
    with pytest.raises(ConfigError, match=r"1 of the 2 held-out prompts are also training prompts \(e.g. \['leak'\]\)"):
        align(config(tmp_path, tiny_chat_model, rms, f"prompts.heldout_path={held}", "prompts.heldout=2"))
    assert not (tmp_path / "policies").exists()  # nothing trained


def test_heldout_overlap_is_whitespace_blind():
    with pytest.raises(ConfigError, match="1 of the 2 held-out"):
        check_heldout(Prompts(train=["Say  hello.", "b"], heldout=["Say hello. ", "c"], ids=["x", "y"]))
    check_heldout(Prompts(train=["a"], heldout=["b"], ids=["y"]))


def test_a_policy_trained_on_in_its_folder_is_not_a_cache_hit(tiny_chat_model, tmp_path):  # noqa: F811
    from mars.evaluation.policy import LocalPolicy

    folder = tmp_path / "policy"
    shutil.copytree(tiny_chat_model, folder)
    before = LocalPolicy(model=str(folder)).identity_digest()
    assert LocalPolicy(model=str(folder)).identity_digest() == before
    os.utime(next(folder.glob("*.safetensors")), ns=(1, 1))  # as if rewritten by more training
    assert LocalPolicy(model=str(folder)).identity_digest() != before


def test_matchups_and_outcome():
    assert matchups(["mars", "uniform"]) == [("mars", START), ("uniform", START), ("mars", "uniform")]
    o = outcome(np.array([1.0, 0.5, 0.0, 1.0]), 200, 0.95, 0)
    assert (o["win"], o["tie"], o["lose"]) == (2, 1, 1) and o["win_rate"]["value"] == 0.625


def test_long_prompts_lose_their_oldest_turns_first(tiny_chat_model):  # noqa: F811
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_chat_model)
    dialogue = "".join(f"\n\nHuman: question {i} " + "word " * 10 + f"\n\nAssistant: answer {i}" for i in range(6))
    dialogue += "\n\nHuman: the last question?\n\nAssistant:"
    messages, cut = fit_prompt(tok, dialogue, 80)
    assert cut and messages[0]["role"] == "user" and messages[-1]["content"] == "the last question?"
    assert prompt_tokens(tok, messages) <= 80
    short, cut = fit_prompt(tok, "Say hello.", 80)
    assert not cut and short == [{"role": "user", "content": "Say hello."}]


def test_the_command_names_a_missing_reward_model_without_a_traceback(tmp_path):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "mars.align", f"hydra.run.dir={tmp_path}"],
                          cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HYDRA_FULL_ERROR": "0"})
    assert done.returncode == 2, done.stderr[-2000:]
    assert "error: reward_models: give one or more by name, e.g. +reward_models.mars=" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout


def test_prompts_from_alpacaeval_instructions_hold_out_the_first(tmp_path):
    from mars.align.prompts import load_prompts_for
    from mars.config import typed
    from tests.conftest import require_data

    require_data()
    cfg = compose_config("align", ["data=alpacaeval_bon", "data.limit=30"], tmp_path)
    prompts = load_prompts_for(typed(cfg, "data"), 20, 10)
    assert len(prompts.heldout) == 10 and len(prompts.train) == 20 and not set(prompts.heldout) & set(prompts.train)
    with pytest.raises(ConfigError, match="align.prompts.train=25, but .* has only 20 distinct training prompts"):
        load_prompts_for(typed(cfg, "data"), 25, 10)


@pytest.mark.parametrize("preset", ["cpu", "paper_v1", "paper_v2"])
def test_align_presets_compose(preset, tmp_path):
    from mars.align.trainer import trl_classes
    from mars.config import typed

    cfg = compose_config("align", [f"align={preset}"], tmp_path)
    data = typed(cfg, "data")
    trl_classes(cfg.rl.algorithm)  # one the installed TRL has
    assert cfg.lora.r == 16 and cfg.lora.alpha == 32 and cfg.lora.dropout == 0.05  # the paper's LoRA
    if preset == "cpu":
        assert cfg.start_policy == "smollm2" and data.path.endswith("harmless-base-test.jsonl.gz")
    else:
        assert cfg.start_policy == "TinyLlama/TinyLlama-1.1B-Chat-v1.0" and data.hub_name == "Anthropic/hh-rlhf"
        assert cfg.rl.bf16 and cfg.rl.max_new_tokens == 128 and cfg.rl.top_p == 0.9
    if preset == "paper_v2":
        assert (cfg.rl.max_steps, cfg.rl.learning_rate, cfg.rl.prompts_per_step) == (250, 5e-6, 16)
        assert cfg.rl.normalize and cfg.rl.clip == 5.0 and cfg.lora.target_modules == "all-linear"
