"""The reward model's token: decoders read the last real token (left or right padding, EOS as
the last token), encoders their pooled first token; the pad token never collides with EOS."""
from __future__ import annotations

import pytest
import torch

from mars.config import BackboneConfig, FinetuneConfig, LossConfig, OptimConfig, validate
from mars.lightning.module import RewardModule
from mars.model.reward_model import last_real_token
from tests.conftest import compose_config


def build(name: str, tmp_path) -> RewardModule:
    torch.manual_seed(0)
    typed = validate(compose_config("train", [f"backbone={name}",
                                              "+backbone.config_overrides.initializer_range=0.3"], tmp_path))
    module = RewardModule(typed["backbone"], FinetuneConfig(), OptimConfig(), LossConfig())
    module.configure_model()
    return module.eval()


def padded(rows: list[list[int]], pad: int, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(0, len(row)) if side == "right" else slice(width - len(row), width)
        ids[i, span], mask[i, span] = torch.tensor(row), 1
    return ids, mask


def test_last_real_token():
    mask = torch.tensor([[1, 1, 0, 0], [0, 0, 1, 1], [1, 1, 1, 1]])
    assert last_real_token(mask).tolist() == [1, 3, 3]


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_qwen2"])
def test_decoder_reward_is_the_same_alone_and_padded_left_or_right(name, tmp_path):
    module = build(name, tmp_path)
    tok = module.tokenizer
    texts = [tok.apply_chat_template([{"role": "user", "content": q}, {"role": "assistant", "content": a}],
                                     tokenize=False) for q, a in (("hi", "hello there"), ("2+2?", "4"),
                                                                  ("a long question " * 5, "fine"))]
    rows = [tok(t)["input_ids"] for t in texts]
    assert all(row[-1] != tok.pad_token_id for row in rows)
    with torch.no_grad():
        alone = torch.cat([module(dict(zip(("input_ids", "attention_mask"), padded([r], tok.pad_token_id, "right"))))[0]
                           for r in rows])
        right = module(dict(zip(("input_ids", "attention_mask"), padded(rows, tok.pad_token_id, "right"))))[0]
        left = module(dict(zip(("input_ids", "attention_mask"), padded(rows, tok.pad_token_id, "left"))))[0]
    torch.testing.assert_close(right, alone, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(left, alone, atol=1e-5, rtol=1e-4)
    assert alone.std() > 1e-3  # not the BOS token's constant


def test_pad_never_equals_eos_and_a_trailing_eos_is_read(tmp_path):
    """SmolLM2 pads with its EOS <|im_end|>: a sequence-classification head (and RewardBench) would
    then read a text ending in EOS one token early. mars pads with its own token, so the export
    reads the same token as mars."""
    from transformers import AutoModelForSequenceClassification

    module = build("tiny_llama", tmp_path)
    tok = module.tokenizer
    assert tok.pad_token == "<|pad|>" and tok.pad_token_id != tok.eos_token_id
    rows = [tok("hello<|im_end|>")["input_ids"], tok("a longer text here<|im_end|>")["input_ids"]]
    assert rows[0][-1] == tok.eos_token_id
    ids, mask = padded(rows, tok.pad_token_id, "right")
    module.model.hf_model().save_pretrained(tmp_path / "export")
    module.model.detach_head()
    hf = AutoModelForSequenceClassification.from_pretrained(tmp_path / "export").eval()
    with torch.no_grad():
        ours = module({"input_ids": ids, "attention_mask": mask})[0]
        before_eos = module({"input_ids": ids[:, :-1], "attention_mask": mask[:, :-1]})[0]
        torch.testing.assert_close(hf(input_ids=ids, attention_mask=mask).logits.squeeze(-1), ours,
                                   atol=1e-5, rtol=1e-4)
    assert (ours[1] - before_eos[1]).abs() > 1e-4  # the EOS itself (the longest row's last column) is read


def test_encoder_reads_its_pooled_first_token(tmp_path):
    module = build("tiny", tmp_path)
    ids, mask = padded([[101, 7, 8, 102], [101, 9, 102]], module.tokenizer.pad_token_id, "right")
    with torch.no_grad():
        rewards, phi = module({"input_ids": ids, "attention_mask": mask})
        bert = module.model.net.base_model
        pooled = bert.pooler(bert(input_ids=ids, attention_mask=mask).last_hidden_state)
    torch.testing.assert_close(phi, pooled)
    torch.testing.assert_close(rewards, module.model.head(pooled).squeeze(-1))


def test_kind_can_be_forced():
    with pytest.raises(ValueError, match="backbone.kind='sideways'"):
        BackboneConfig(kind="sideways")
