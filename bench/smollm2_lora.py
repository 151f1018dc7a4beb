"""SmolLM2-135M-Instruct as a LoRA reward model on real HH-RLHF pairs, on this CPU: held-out
accuracy of the untrained reward head and after one epoch, with the wall time.

    python bench/smollm2_lora.py [--train 256] [--test 200] [--max-length 128] [--lr 2e-4]
    python bench/smollm2_lora.py --quick     # 16 train pairs, 16 test pairs, max length 64 (a smoke run)
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import _common as C


def main() -> None:
    p = C.arg_parser(__doc__)
    p.add_argument("--train", type=int, default=256)
    p.add_argument("--test", type=int, default=200)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-4)
    args = C.parse(p)
    if args.quick:
        args.train, args.test, args.max_length = 16, 16, 64
    C.begin()
    import lightning as L
    import numpy as np

    import mars.cli.train as train_script
    from mars.config import validate
    from mars.data.splits import load_splits
    from mars.evaluation.pairwise import bootstrap
    from mars.data.format import PairFormatter
    from mars.lightning.module import RewardModule
    from mars.model.scoring import Scorer

    def score(module, pairs):
        fmt = PairFormatter.of(module.tokenizer, module.backbone_cfg)
        s = Scorer(fmt, module.tokenizer.pad_token_id, module, packing=True, max_tokens=2048).pairs(pairs)
        return s.r_chosen, s.r_rejected

    out = Path(tempfile.mkdtemp(prefix="mars_bench_smollm2_"))
    overrides = ["data=hh_rlhf_offline", f"data.train_size={args.train}", "data.val_size=50",
                 f"data.test_size={args.test}", "data.packing=true", "data.max_tokens_per_batch=2048",
                 "backbone=smollm2", f"backbone.max_length={args.max_length}", "finetune=lora",
                 "allocator=none", "augmenter=none", "trainer.max_epochs=1", f"optim.lr={args.lr}",
                 "callbacks.model_summary=null", "export=false"]
    cfg = C.compose(overrides, out)
    typed = validate(cfg)
    test = load_splits(typed["data"])["test"]
    L.seed_everything(cfg.seed)
    untrained = RewardModule(typed["backbone"], typed["finetune"], typed["optim"], typed["loss"])
    untrained.configure_model()
    t0 = time.perf_counter()
    before = bootstrap(*score(untrained, test), n=1000)["acc"]
    t_score = time.perf_counter() - t0
    t0 = time.perf_counter()
    metrics, objs = train_script.train(cfg)
    t_train = time.perf_counter() - t0
    after = bootstrap(*score(objs["model"], test), n=1000)["acc"]
    result = {"overrides": overrides, "test_pairs": len(test), "acc_untrained": before, "acc_trained": after,
              "val_acc": metrics.get("val/acc"), "score_s": t_score, "train_and_test_s": t_train,
              "trainable": sum(p.numel() for p in objs["model"].parameters() if p.requires_grad),
              "parameters": sum(p.numel() for p in objs["model"].parameters())}
    C.write_json(args.json, result)
    print(f"SmolLM2 LoRA on {args.train} HH pairs: held-out accuracy {before['value']:.3f} "
          f"[{before['lo']:.3f}, {before['hi']:.3f}] untrained -> {after['value']:.3f} "
          f"[{after['lo']:.3f}, {after['hi']:.3f}] after 1 epoch; {t_train:.0f} s to train and test")
    print(f"SUMMARY smollm2_lora: acc {before['value']:.3f} untrained -> {after['value']:.3f} after 1 epoch on "
          f"{args.train} pairs ({args.test} test pairs), {t_train:.0f} s to train and test")
    np.testing.assert_equal(len(test), args.test)


if __name__ == "__main__":
    main()
