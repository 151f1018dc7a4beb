"""Callbacks of mars's own (Lightning's stock ones are configured in conf/callbacks/)."""
from __future__ import annotations

import json
import os

import lightning as L


class PairAudit(L.Callback):
    """Writes, per epoch and rank, the training set D^t the rank built and the pairs it trained on.

    `audit/epoch{e}_rank{r}.json` = {"train_set": [ids of D^t], "seen": [ids in batch order]}: an
    audit trail of what the model saw (and the check that each pair is seen once across ranks).
    """

    def __init__(self, dirpath: str):
        self.dirpath = dirpath
        self.seen: list[str] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.seen = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        pairs = trainer.datamodule.epoch_pairs
        self.seen += [pairs[i].id for i in batch["index"].tolist()]

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        os.makedirs(self.dirpath, exist_ok=True)
        path = os.path.join(self.dirpath, f"epoch{trainer.current_epoch}_rank{trainer.global_rank}.json")
        with open(path, "w") as f:
            json.dump({"train_set": [p.id for p in trainer.datamodule.epoch_pairs], "seen": self.seen}, f)
