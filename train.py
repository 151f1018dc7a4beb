"""Train a reward model: `python train.py [group=choice ...] [key=value ...]` (mars.cli.train)."""
import hydra
from omegaconf import DictConfig

from mars.cli.runtime import report_user_errors
from mars.cli.train import train


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
@report_user_errors
def main(cfg: DictConfig) -> float | None:
    metrics, _ = train(cfg)
    return metrics.get(cfg.get("optimized_metric", "val/acc_best"))  # what a sweep optimises


if __name__ == "__main__":
    main()
