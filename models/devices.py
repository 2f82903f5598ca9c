"""Which GPU a worker process uses: one model per GPU, each worker process on its own device.

`--clip-device auto` on a machine with several GPUs: a launcher's LOCAL_RANK (torchrun's
convention) when set; else, with one visible device (a launcher that sets CUDA_VISIBLE_DEVICES
per process, or a one-GPU machine), that one; else the process claims the first free slot
among the machine's worker processes (a lock file held while it lives; the OS frees it when the
process ends) and takes GPU `slot % count`: N workers on N GPUs get one each, 2N share them two
by two.
"""

import fcntl
import os
import tempfile
from collections.abc import Callable, Mapping

MAX_SLOTS = 4096
_claimed: dict[str, tuple[int, int, object]] = {}  # folder -> (pid, slot, the open lock file)


def choose_device(cuda_devices: int, environ: Mapping[str, str], slot: Callable[[], int]) -> str:
    """The torch device of `auto` for a process that sees `cuda_devices` GPUs."""
    if cuda_devices <= 0:
        return "cpu"
    rank = environ.get("LOCAL_RANK", "").strip()
    if rank.isdigit():
        return f"cuda:{int(rank) % cuda_devices}"
    if cuda_devices == 1:
        return "cuda:0"
    return f"cuda:{slot() % cuda_devices}"


def slots_folder() -> str:
    return os.path.join(tempfile.gettempdir(), f"crawl2clip-gpu-slots-{os.getuid()}")


def process_slot(folder: str | None = None) -> int:
    """This process's slot number (0, 1, ...), claimed once per process: the first `slot-N.lock`
    in `folder` no live process holds. A forked child claims its own."""
    folder = folder or slots_folder()
    held = _claimed.get(folder)
    if held and held[0] == os.getpid():
        return held[1]
    os.makedirs(folder, exist_ok=True)
    for slot in range(MAX_SLOTS):
        lock = open(os.path.join(folder, f"slot-{slot}.lock"), "a")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            continue
        _claimed[folder] = (os.getpid(), slot, lock)  # kept open: the lock lives with the process
        return slot
    raise RuntimeError(f"{folder}: all {MAX_SLOTS} GPU slots are held")
