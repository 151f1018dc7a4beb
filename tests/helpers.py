"""Test-only callbacks, importable by Hydra `_target_` in configs composed by the tests."""
import lightning as L


class CrashAtEpoch(L.Callback):
    """Simulates a killed run: raises when epoch `epoch` starts (its round is already built)."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            raise RuntimeError(f"simulated crash at epoch {self.epoch}")


class RecordLR(L.Callback):
    """The learning rate of every optimiser step, and the planned horizon, for schedule tests."""

    def __init__(self):
        self.lrs: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])
