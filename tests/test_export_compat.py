"""The export in the form transformers 4 reads too (mars/model/portable.py): the saved config
and tokenizer files, checked here without a second environment (bench/export_compat.py loads
them under transformers 4.51.0 and 4.57.6); and an export written before, still read as it was."""
from __future__ import annotations

import json

import numpy as np
import pytest

from mars.data.demo import demo_splits
from mars.model.export import export_reward_model, load_for_eval
from mars.model.portable import OLDEST_CHECKED, portable_config
from tests.conftest import score
from tests.test_eval import build


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    folder = tmp_path_factory.mktemp("compat")
    return {name: (export_reward_model(m := build(name, "lora", folder / name), str(folder / name / "export")), m)
            for name in ("tiny", "tiny_llama")}


def files(folder: str) -> tuple[dict, dict, dict]:
    return tuple(json.load(open(f"{folder}/{name}.json")) for name in ("config", "tokenizer_config", "mars_export"))


def test_a_decoder_export_carries_the_keys_transformers_4_reads(exports):
    folder, _ = exports["tiny_llama"]
    config, tokenizer, info = files(folder)
    assert config["rope_theta"] == config["rope_parameters"]["rope_theta"] and config["rope_scaling"] is None
    assert config["torch_dtype"] == config["dtype"]
    assert tokenizer["tokenizer_class"] == "PreTrainedTokenizerFast"  # not transformers 5's TokenizersBackend
    assert tokenizer["model_input_names"] == ["input_ids", "attention_mask"]  # Llama refuses token_type_ids
    assert tokenizer["chat_template"] == open(f"{folder}/chat_template.jinja").read()
    assert not {"is_local", "local_files_only"} & set(tokenizer)
    assert info["transformers_version"].startswith("5.") and info["oldest_transformers_checked"] == OLDEST_CHECKED


def test_an_encoder_export_keeps_its_tokenizer_and_inputs(exports):
    folder, _ = exports["tiny"]
    config, tokenizer, _ = files(folder)
    assert "rope_theta" not in config and tokenizer["tokenizer_class"] == "BertTokenizer"
    assert "model_input_names" not in tokenizer  # BERT takes token_type_ids


def test_scaled_rotary_parameters_become_transformers_4s_rope_scaling():
    llama3 = {"rope_theta": 500000.0, "rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
              "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    config = {"rope_parameters": dict(llama3), "dtype": "bfloat16"}
    portable_config(config)
    assert config["rope_theta"] == 500000.0 and config["torch_dtype"] == "bfloat16"
    assert config["rope_scaling"] == {k: v for k, v in llama3.items() if k != "rope_theta"}
    per_layer_type = {"rope_parameters": {"full_attention": {"rope_theta": 1e6}}}
    portable_config(per_layer_type)  # no single base to write: left to transformers 5
    assert "rope_theta" not in per_layer_type


def test_an_export_written_before_scores_as_it_did(exports, tmp_path):
    import shutil

    folder, module = exports["tiny_llama"]
    old = shutil.copytree(folder, tmp_path / "old")
    for name, drop in (("config", ("rope_theta", "rope_scaling", "torch_dtype")),
                       ("tokenizer_config", ("chat_template", "model_input_names"))):
        data = json.load(open(old / f"{name}.json"))
        for key in drop:
            data.pop(key)
        if name == "tokenizer_config":
            data["tokenizer_class"] = "TokenizersBackend"
        json.dump(data, open(old / f"{name}.json", "w"))
    pairs = demo_splits(40, 10, 12, seed=0)["test"]
    before, now = score(load_for_eval(str(old)), pairs), score(load_for_eval(folder), pairs)
    np.testing.assert_allclose(before[0], now[0], atol=1e-6)
    np.testing.assert_allclose(before[1], now[1], atol=1e-6)
