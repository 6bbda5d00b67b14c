"""Atomic, resumable training checkpoints.

Layout of ``<output_dir>/checkpoint-<step>/`` (step zero-padded to 8 digits):

- ``trainable.safetensors``: the trainable parameters (the frozen ones are rebuilt from the run's
  config: ``init_from`` or the seeded random initialisation);
- ``optimizer.pt``: optimizer state (tensors and numbers only; loaded with ``weights_only=True``);
- ``trainer_state.json``: step, samples consumed, sampler / scheduler state, counters, config;
- ``rng-<rank>.json`` + ``rng-<rank>.safetensors``: Python, NumPy, torch (and CUDA) RNG states of
  every process;
- ``COMPLETE``: written last.

Atomicity: everything is written into a hidden ``.tmp-checkpoint-<step>`` folder, each file is
fsynced, ``COMPLETE`` goes in last, then the folder is renamed into place with ``os.replace`` and
the parent folder is fsynced. A crash at any point leaves either the previous state or a hidden
temporary folder (ignored by :func:`find_latest_checkpoint` and removed on the next save), never a
``checkpoint-*`` folder that looks complete but is not.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from pixellm.errors import ConfigError
from pixellm.files import disk_guard, fsync_dir

COMPLETE = "COMPLETE"
PREFIX = "checkpoint-"
TMP_PREFIX = ".tmp-" + PREFIX
_NAME = re.compile(rf"^{PREFIX}(\d+)$")


def checkpoint_name(step: int) -> str:
    return f"{PREFIX}{step:08d}"


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def write_json(path: Path, obj: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
        f.flush()
        os.fsync(f.fileno())


# -- RNG state -------------------------------------------------------------------------------------


def capture_rng_state() -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(JSON part: Python + NumPy, tensor part: torch CPU + CUDA) of this process's RNGs."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    meta = {
        "python": [py_version, list(py_state), py_gauss],
        "numpy": [np_name, np.asarray(np_keys).tolist(), int(np_pos), int(np_has_gauss), float(np_gauss)],
        "cuda_devices": torch.cuda.device_count() if torch.cuda.is_available() else 0,
    }
    tensors = {"torch": torch.get_rng_state()}
    if meta["cuda_devices"]:
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda{i}"] = s
    return meta, tensors


def restore_rng_state(meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    version, state, gauss = meta["python"]
    random.setstate((version, tuple(state), gauss))
    name, keys, pos, has_gauss, np_gauss = meta["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, np_gauss))
    torch.set_rng_state(tensors["torch"])
    n = int(meta.get("cuda_devices", 0))
    if n and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[f"cuda{i}"] for i in range(min(n, torch.cuda.device_count()))])


# -- save ------------------------------------------------------------------------------------------


def prepare_tmp_dir(output_dir: str | os.PathLike, step: int) -> Path:
    """Create an empty hidden temporary folder for the checkpoint of ``step`` (main process)."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / (TMP_PREFIX + f"{step:08d}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    return tmp


def tmp_dir_for(output_dir: str | os.PathLike, step: int) -> Path:
    return Path(output_dir) / (TMP_PREFIX + f"{step:08d}")


def write_rng_state(folder: Path, rank: int) -> None:
    """Every process writes its own RNG state into the (shared) temporary folder."""
    meta, tensors = capture_rng_state()
    with _cleanup_on_error(folder):
        write_json(folder / f"rng-{rank}.json", meta)
        path = folder / f"rng-{rank}.safetensors"
        save_file(tensors, str(path))
        _fsync_file(path)


def write_main_state(
    folder: Path,
    trainable: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any] | None,
    trainer_state: dict[str, Any],
) -> None:
    """Main process: weights, optimizer and trainer state (not yet marked complete).

    A full disk raises ``DiskFullError`` ("no space left ... <path>") and removes the temporary
    folder; the previous checkpoint is untouched."""
    with _cleanup_on_error(folder):
        path = folder / "trainable.safetensors"
        save_file({k: v.detach().contiguous().cpu() for k, v in trainable.items()}, str(path))
        _fsync_file(path)
        if optimizer_state is not None:
            path = folder / "optimizer.pt"
            torch.save(optimizer_state, path)
            _fsync_file(path)
        write_json(folder / "trainer_state.json", trainer_state)


@contextlib.contextmanager
def _cleanup_on_error(folder: Path) -> Iterator[None]:
    """Report a full disk as one line naming the checkpoint folder, and free the half-written
    temporary folder (it is never mistaken for a checkpoint, but it holds the space)."""
    try:
        with disk_guard(folder):
            yield
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def finalize_checkpoint(
    output_dir: str | os.PathLike, step: int, keep: int | None = None, fail_before_rename: bool = False
) -> Path:
    """Mark the temporary folder complete and move it into place atomically (main process).

    ``keep``: delete all but the newest ``keep`` complete checkpoints afterwards.
    ``fail_before_rename`` simulates a crash between marking and renaming (tests).
    """
    out = Path(output_dir)
    tmp = tmp_dir_for(out, step)
    write_json(tmp / COMPLETE, {"step": step})
    fsync_dir(tmp)
    if fail_before_rename:
        raise RuntimeError("simulated crash before the checkpoint rename")
    final = out / checkpoint_name(step)
    if final.exists():
        # Re-saving a step (e.g. after a resume): move the old one aside first, since
        # os.replace cannot overwrite a non-empty directory.
        trash = out / (f".old-{final.name}")
        if trash.exists():
            shutil.rmtree(trash)
        os.replace(final, trash)
        os.replace(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, final)
    fsync_dir(out)
    for stale in out.glob(TMP_PREFIX + "*"):
        if stale != tmp:
            shutil.rmtree(stale, ignore_errors=True)
    if keep is not None and keep > 0:
        for old in list_checkpoints(out)[:-keep]:
            shutil.rmtree(old[1], ignore_errors=True)
    return final


# -- find / load -----------------------------------------------------------------------------------


def is_complete(folder: str | os.PathLike) -> bool:
    folder = Path(folder)
    return folder.is_dir() and (folder / COMPLETE).is_file() and (folder / "trainer_state.json").is_file()


def list_checkpoints(output_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints in ``output_dir``, oldest first."""
    out = Path(output_dir)
    if not out.is_dir():
        return []
    found = []
    for p in out.iterdir():
        m = _NAME.match(p.name)
        if m and is_complete(p):
            found.append((int(m.group(1)), p))
    return sorted(found)


def find_latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint (incomplete and temporary folders are ignored)."""
    found = list_checkpoints(output_dir)
    return found[-1][1] if found else None


def load_trainer_state(folder: str | os.PathLike) -> dict[str, Any]:
    folder = Path(folder)
    if not is_complete(folder):
        raise ConfigError(f"{folder}: not a complete checkpoint (no {COMPLETE} marker)")
    with open(folder / "trainer_state.json", encoding="utf-8") as f:
        return json.load(f)


def load_trainable(folder: str | os.PathLike) -> dict[str, torch.Tensor]:
    return load_file(str(Path(folder) / "trainable.safetensors"))


def load_optimizer_state(folder: str | os.PathLike) -> dict[str, Any] | None:
    path = Path(folder) / "optimizer.pt"
    return torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else None


def load_rng_state(folder: str | os.PathLike, rank: int) -> bool:
    """Restore this process's RNG state; False when the checkpoint has none for ``rank``
    (e.g. resumed with more processes than it was written with)."""
    folder = Path(folder)
    meta_path, tensor_path = folder / f"rng-{rank}.json", folder / f"rng-{rank}.safetensors"
    if not meta_path.is_file() or not tensor_path.is_file():
        return False
    with open(meta_path, encoding="utf-8") as f:
        meta = json.load(f)
    restore_rng_state(meta, load_file(str(tensor_path)))
    return True
