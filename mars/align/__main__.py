"""`python -m mars.align reward_models.NAME=RUN ... [gold=GOLD] [align=cpu|paper_v1|paper_v2]` (conf/align.yaml)."""
from __future__ import annotations

import os

import hydra
from omegaconf import DictConfig

from mars.cli.runtime import quiet_known_noise, report_user_errors

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")


@hydra.main(version_base="1.3", config_path="../../conf", config_name="align")
@report_user_errors
def main(cfg: DictConfig) -> None:
    from mars.align.stage import align

    quiet_known_noise()
    align(cfg)


if __name__ == "__main__":
    main()
