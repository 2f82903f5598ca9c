"""Training one variant with open_clip's own trainer, and reading back what it did.

Every variant gets the same command line but for its shards and name: model, seed (so the same
initial weights), batch size, steps, learning-rate schedule, precision. The trainer's webdataset
loader is told `--train-num-samples STEPS_PER_EPOCH x BATCH`: it draws exactly that many samples
per epoch, reading a variant's shards again from the start (reshuffled) whenever they run out, so
a smaller variant is repeated more and every variant sees the same number of samples. The
trainer's own `params.txt` and `out.log` are the record of what ran (`read_training`).
"""

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from crawl2clip.models.clip import TINY_MODEL, resolve_device

PARAMS = "params.txt"
OUT_LOG = "out.log"
CONSOLE_LOG = "console.log"
TRAIN_LINE = re.compile(r"Train Epoch: (\d+) \[\s*(\d+)/(\d+) \(\d+%\)\].*? Loss: ([0-9.eE+-]+)")


@dataclass(frozen=True)
class TrainSettings:
    """What every variant is trained with. `warmup` None: a tenth of the steps."""
    model: str = TINY_MODEL
    steps: int = 300
    batch_size: int = 64
    epochs: int = 1
    seed: int = 0
    lr: float = 1e-3
    warmup: int | None = None
    workers: int = 1
    device: str = "auto"
    # the trainer's CPU threads: 1 keeps a shared CPU from thrashing (10x faster than 2 threads
    # on the 2 busy cores this was built on); no effect on what is computed
    threads: int = 1

    @property
    def samples_seen(self) -> int:
        return self.steps * self.batch_size

    @property
    def steps_per_epoch(self) -> int:
        return self.steps // self.epochs

    @property
    def warmup_steps(self) -> int:
        return self.steps // 10 if self.warmup is None else self.warmup

    @property
    def model_name(self) -> str:
        """The open_clip name: a config file's is its file name without `.json`."""
        return os.path.basename(self.model)[: -len(".json")] if self.model.endswith(".json") else self.model

    def problems(self) -> list[str]:
        problems = []
        for name in ("steps", "batch_size", "epochs"):
            if getattr(self, name) < 1:
                problems.append(f"--{name.replace('_', '-')} must be >= 1")
        if self.workers < 0:
            problems.append("--workers must be >= 0")
        if self.threads < 1:
            problems.append("--threads must be >= 1")
        if not problems and self.steps % self.epochs:
            problems.append(f"--steps {self.steps} is not a multiple of --epochs {self.epochs}")
        if not problems and self.steps_per_epoch % max(1, self.workers):
            # open_clip_train rounds each epoch's batches up to a multiple of its loader workers
            problems.append(f"steps per epoch ({self.steps_per_epoch}) must be a multiple of --workers {self.workers}")
        if self.lr <= 0:
            problems.append("--lr must be > 0")
        if self.warmup is not None and self.warmup < 0:
            problems.append("--warmup must be >= 0")
        if self.model.endswith(".json") and not os.path.isfile(self.model):
            problems.append(f"--model {self.model}: no such config file")
        return problems

    def record(self) -> dict:
        """The settings a comparison folder is bound to (device and threads may change between runs)."""
        return {key: value for key, value in asdict(self).items() if key not in ("device", "threads")}


def precision(device: str) -> str:
    """fp32 on CPU; the trainer's own default (mixed precision) on a GPU."""
    return "fp32" if device == "cpu" else "amp"


def trainer_args(settings: TrainSettings, train_data: str, logs: str, name: str, device: str) -> list[str]:
    """open_clip_train's command line for one variant."""
    return [
        "--train-data", train_data, "--dataset-type", "webdataset",
        "--train-num-samples", str(settings.steps_per_epoch * settings.batch_size),
        "--epochs", str(settings.epochs), "--batch-size", str(settings.batch_size),
        "--model", settings.model_name, "--seed", str(settings.seed),
        "--lr", str(settings.lr), "--warmup", str(settings.warmup_steps),
        "--workers", str(settings.workers), "--device", device, "--precision", precision(device),
        "--logs", logs, "--name", name, "--log-every-n-steps", "1",
    ]


def checkpoint_path(log_dir: str, settings: TrainSettings) -> str:
    """The trainer's checkpoint after the last epoch."""
    return os.path.join(log_dir, "checkpoints", f"epoch_{settings.epochs}.pt")


def train(settings: TrainSettings, train_data: str, logs: str, name: str,
          progress: Callable[[dict], None] | None = None, poll_seconds: float = 2.0) -> int:
    """Runs the trainer process for one variant (LOGS/NAME/: params.txt, out.log, checkpoints/,
    and the process's own output in console.log); calls `progress(read_training(...))` while it
    runs; returns its exit status."""
    log_dir = os.path.join(logs, name)
    os.makedirs(log_dir, exist_ok=True)
    device = resolve_device(settings.device)
    command = [sys.executable, "-m", "crawl2clip.transforms.compare.trainer"]
    if settings.model.endswith(".json"):
        command += ["--model-config", os.path.abspath(settings.model)]
    command += ["--", *trainer_args(settings, train_data, logs, name, device)]
    environment = {**os.environ, "OMP_NUM_THREADS": str(settings.threads)}
    with open(os.path.join(log_dir, CONSOLE_LOG), "w") as console:
        process = subprocess.Popen(command, stdout=console, stderr=subprocess.STDOUT, env=environment)
        while process.poll() is None:
            time.sleep(poll_seconds)
            if progress is not None and os.path.exists(os.path.join(log_dir, OUT_LOG)):
                progress(read_training(log_dir))
    return process.returncode


def read_params(path: str) -> dict[str, str]:
    """params.txt as the trainer writes it: `name: value` per line."""
    params = {}
    with open(path) as f:
        for line in f:
            name, sep, value = line.rstrip("\n").partition(": ")
            if sep:
                params[name] = value
    return params


def read_training(log_dir: str) -> dict:
    """What the trainer did, from its own files: its parameters (params.txt) and, from out.log's
    per-step lines, the steps taken, samples seen and losses, per epoch and in total."""
    params = read_params(os.path.join(log_dir, PARAMS)) if os.path.exists(os.path.join(log_dir, PARAMS)) else {}
    epochs: dict[int, dict] = {}
    losses = []
    out_log = os.path.join(log_dir, OUT_LOG)
    if os.path.exists(out_log):
        with open(out_log) as f:
            for line in f:
                if match := TRAIN_LINE.search(line):
                    epoch, seen, per_epoch, loss = int(match[1]), int(match[2]), int(match[3]), float(match[4])
                    epochs[epoch] = {"samples": seen, "samples_per_epoch": per_epoch}
                    losses.append(loss)
    batch_size = int(params["batch_size"]) if "batch_size" in params else None
    samples = sum(e["samples"] for e in epochs.values())
    return {
        "params": params,
        "epochs_logged": len(epochs),
        "samples_seen": samples,
        "steps": samples // batch_size if batch_size else len(losses),
        "losses": losses,
        "final_loss": losses[-1] if losses else None,
    }
