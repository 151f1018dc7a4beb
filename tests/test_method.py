"""The MARS loop as a plain object: two rounds on a tiny reward model, with a plain torch
optimiser step between them, in a process that never imports Lightning."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = r'''
import json, sys
import torch
from mars.allocators.mars import MarsAllocator
from mars.augmenters.eda import EDAAugmenter
from mars.config import BackboneConfig, FinetuneConfig, LoopConfig
from mars.data.batch import Collator
from mars.data.demo import demo_splits
from mars.data.format import PairFormatter
from mars.method.loop import MarsLoop
from mars.model.backbone import load_tokenizer
from mars.model.build import build_reward_model
from mars.model.loss import bradley_terry_loss
from mars.model.scoring import Scorer

torch.manual_seed(0)
backbone = BackboneConfig(random_init=True, max_length=64, min_prompt_tokens=16, config_overrides=dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64))
tokenizer = load_tokenizer(backbone)
model = build_reward_model(backbone, FinetuneConfig(), tokenizer)
formatter = PairFormatter(tokenizer, backbone.max_length, backbone.min_prompt_tokens)
scorer = Scorer(formatter, tokenizer.pad_token_id, model, batch_size=8)
splits = demo_splits(64, 8, 8, 0)
loop = MarsLoop(LoopConfig(budget=24, warmup_epochs=0), MarsAllocator(0.5), EDAAugmenter(seed=0), scorer, seed=1)
loop.start(splits["train"], {"val": splits["val"], "test": splits["test"]})
collate, optimiser = Collator(tokenizer.pad_token_id), torch.optim.AdamW(model.parameters(), lr=1e-2)
sizes = []
for epoch in (0, 1):
    pairs = loop.next_training_set(epoch)
    sizes.append(len(pairs))
    model.train()
    batch = collate(formatter.encode(pairs[:16]))
    r_chosen, r_rejected = model({k: v for k, v in batch.items() if k != "index"})[0].chunk(2)
    bradley_terry_loss(r_chosen, r_rejected).backward()
    optimiser.step(), optimiser.zero_grad()
print(json.dumps({"sizes": sizes, "rounds": [h["round"] for h in loop.history],
                  "margins": [h["margins"][:4] for h in loop.history],
                  "lightning": sorted(m for m in sys.modules if m.split(".")[0] in ("lightning", "pytorch_lightning"))}))
'''


def test_two_rounds_on_a_tiny_model_without_lightning():
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["lightning"] == []
    assert result["rounds"] == [1, 2] and result["sizes"] == [64 + 24, 64 + 48]  # D^t grows by B^t a round
    assert result["margins"][0] != result["margins"][1]  # round 2 scored the model the step changed
