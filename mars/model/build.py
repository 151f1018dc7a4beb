"""The reward model built from its config: network, reward head, finetune policy. Plain torch:
the Lightning module calls this inside the strategy's init context (configure_model), evaluation
calls it directly."""
from __future__ import annotations

from mars.config import BackboneConfig, FinetuneConfig
from mars.model.backbone import is_decoder, load_network
from mars.model.finetune import apply_finetune, load_kwargs
from mars.model.reward_model import RewardModel


def build_reward_model(backbone: BackboneConfig, finetune: FinetuneConfig, tokenizer) -> RewardModel:
    """`backbone`'s network under a one-output head, with `finetune`'s policy applied."""
    net = load_network(backbone, tokenizer, **load_kwargs(finetune))
    decoder = is_decoder(net.config) if backbone.kind == "auto" else backbone.kind == "decoder"
    model = RewardModel(net, decoder)
    apply_finetune(model, finetune)
    if backbone.gradient_checkpointing and model.trunk is None:
        net.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model
