"""FSDP2 for the reward model: each transformer block, then the whole model, sharded over the
data-parallel mesh that Lightning's `ModelParallelStrategy` hands the module (`trainer=fsdp`,
`trainer=fsdp_sim`).

The blocks are the classes the network itself declares as not to be split
(`_no_split_modules`, what accelerate wraps too). bf16 precision becomes FSDP2's mixed
precision: bf16 parameters in compute, gradients reduced in fp32.
"""
from __future__ import annotations

import torch

from mars.model.reward_model import RewardModel


def shard(model: RewardModel, mesh, precision: str) -> None:
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    kwargs = {"mesh": mesh}
    if "bf16" in str(precision):
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    blocks = set(getattr(model.net, "_no_split_modules", None) or [])
    for module in model.net.modules():
        if type(module).__name__ in blocks:
            fully_shard(module, **kwargs)
    fully_shard(model, **kwargs)


def is_sharded(parameter: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(parameter, DTensor)
