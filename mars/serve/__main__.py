"""`python -m mars.serve model=<export or run folder> [port=8000 host=127.0.0.1 ...]` (conf/serve.yaml)."""
from __future__ import annotations

import signal

import hydra
import litserve as ls
from omegaconf import DictConfig

from mars.cli.runtime import report_user_errors
from mars.evaluation.models import resolve_model
from mars.serve.api import CheckRequests, RewardAPI


def server(cfg: DictConfig) -> ls.LitServer:
    model, _ = resolve_model(cfg.model)
    api = RewardAPI(model, cfg.max_items, cfg.max_length, cfg.batch_size, cfg.packing, cfg.max_tokens, cfg.bf16,
                    cfg.allow_unverified_packing,
                    max_batch_size=cfg.max_batch_size, batch_timeout=cfg.batch_timeout, api_path=cfg.api_path)
    check = (CheckRequests, {"path": cfg.api_path, "max_items": cfg.max_items, "max_bytes": cfg.max_body_bytes,
                             "token_env": cfg.token_env})
    return ls.LitServer(api, accelerator=cfg.accelerator, devices=cfg.devices, workers_per_device=cfg.workers_per_device,
                        timeout=cfg.timeout, middlewares=[check], enable_shutdown_api=False)


@hydra.main(version_base="1.3", config_path="../../conf", config_name="serve")
@report_user_errors
def main(cfg: DictConfig) -> None:
    signal.signal(signal.SIGTERM, stop)
    server(cfg).run(host=cfg.host, port=cfg.port, generate_client_file=False)


def stop(signum, frame) -> None:
    """SIGTERM (systemd, Kubernetes, `kill`) stops the server as Ctrl-C does: LitServe then ends its
    workers too, instead of leaving them behind."""
    raise KeyboardInterrupt


if __name__ == "__main__":
    main()
