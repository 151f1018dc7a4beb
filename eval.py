"""Evaluate reward models: `python eval.py model=<run, export or .ckpt> data=<data>` (mars.cli.evaluate)."""
import hydra
from omegaconf import DictConfig

from mars.cli.evaluate import evaluate
from mars.cli.runtime import report_user_errors


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
@report_user_errors
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
