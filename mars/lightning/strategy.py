"""What the Lightning glue hands down from the trainer's strategy: the scorer over the strategy's
model, the best checkpoint's weights, the full weights of a sharded model for the export."""
from __future__ import annotations

import lightning as L

from mars.config import DataConfig
from mars.data.format import PairFormatter
from mars.distributed import LOCAL
from mars.model.export import load_weights
from mars.model.scoring import Scorer


def strategy_scorer(trainer: L.Trainer, formatter: PairFormatter, data: DataConfig) -> Scorer:
    """The one scorer through the strategy's model (the wrapped or sharded one, so that every rank
    runs the same forward passes) on the strategy's device; train/eval mode is the module's."""
    return Scorer(formatter, formatter.tokenizer.pad_token_id, trainer.strategy.model, data.eval_batch_size,
                  packing=data.packing, max_tokens=data.max_tokens_per_batch, dist=LOCAL,
                  prefix_sharing=data.prefix_sharing,
                  device=trainer.strategy.root_device, module=trainer.lightning_module)


def load_best(trainer: L.Trainer, module, ckpt_path: str) -> None:
    """The best checkpoint's weights into `module`: through the strategy when it is sharded (every
    rank loads its shards), else strictly from the file."""
    if module.device_mesh is not None:
        trainer.strategy.load_checkpoint(ckpt_path)
    else:
        load_weights(module, ckpt_path)


def full_module(module):
    """`module` itself, or under FSDP2 an unsharded copy with the full weights, gathered from every
    rank (each rank calls this; rank 0 gets the copy, the others None)."""
    if module.device_mesh is None:
        return module
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from mars.lightning.module import RewardModule

    state = get_model_state_dict(module.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if dist.get_rank() != 0:
        return None
    copy = RewardModule(module.backbone_cfg, module.finetune_cfg, module.optim_cfg, module.loss_cfg, module.seed,
                        module.tokenizer)
    copy.configure_model()
    copy.model.load_state_dict(state)
    return copy
