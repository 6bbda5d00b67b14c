"""Checked reading and safe writing of model folders (one place for every command).

- :func:`check_model_folder`: a saved model folder has ``config.json`` and readable
  safetensors weights, checked before anything is built (without ``config.json``
  ``from_pretrained`` would silently build the default 7B model and run out of memory).
- :func:`atomic_folder`: write a whole folder under a hidden temporary name and rename it into
  place, so a crash leaves the previous folder (or none), never a half-written one.
- :func:`quiet_transformers`: silence transformers' load reports while a folder is read (the
  callers check what matters and say it in one line).
- :func:`disk_guard`: turn a failed write caused by a full disk (``OSError`` ENOSPC, or the
  ``RuntimeError`` that ``torch.save`` raises instead) into a one-line "no space left" error.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pixellm.errors import ConfigError, PixelLMError

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
LOW_SPACE_BYTES = 64 * 2**20  # a write that fails with less free space than this: disk full


class DiskFullError(PixelLMError):
    """A write failed because the file system is full (or the quota is exhausted)."""


def weight_files(directory: str | os.PathLike) -> list[Path]:
    """The safetensors files of a model folder (one file, or the shards of an index).

    Raises ``ConfigError`` naming the folder and the missing file.
    """
    root = Path(directory)
    single, index = root / WEIGHTS_FILE, root / WEIGHTS_INDEX_FILE
    if single.is_file():
        return [single]
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise ConfigError(f"{index}: not a valid safetensors index ({type(err).__name__})") from err
        files = [root / s for s in shards]
        for f in files:
            if not f.is_file():
                raise ConfigError(f"{root}: missing weights shard {f.name} (listed in {WEIGHTS_INDEX_FILE})")
        return files
    raise ConfigError(f"{root}: missing {WEIGHTS_FILE} (not a complete saved model folder)")


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' load reports: the callers' checks say what matters in one line."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def check_safetensors(path: str | os.PathLike) -> None:
    """Raise ``ConfigError`` naming ``path`` unless its header is whole and covers the file."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            f.keys()
    except Exception as err:  # SafetensorError: empty, truncated, or not safetensors at all
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConfigError(f"{path}: unreadable weights file ({detail}; empty or truncated?)") from err


def check_model_folder(directory: str | os.PathLike) -> None:
    """Fail fast, with one line naming the folder and file, unless ``directory`` looks like a
    complete ``save_pretrained`` model folder (``config.json`` parses, weights are readable)."""
    root = Path(directory)
    if not root.is_dir():
        raise ConfigError(f"{root}: model folder not found")
    config = root / CONFIG_FILE
    if not config.is_file():
        raise ConfigError(f"{root}: missing {CONFIG_FILE} (not a saved model folder)")
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise ConfigError(f"{config}: not valid JSON ({err})") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{config}: expected a JSON object")
    for f in weight_files(root):
        check_safetensors(f)


def model_fingerprint(directory: str | os.PathLike) -> dict[str, Any]:
    """What identifies a saved model cheaply: its folder, a hash of ``config.json`` and of each
    weights file's header plus its first and last MiB (hashing 14 GB of weights would take
    minutes; two different trainings differ in these bytes)."""
    root = Path(directory)
    digest = hashlib.sha256((root / CONFIG_FILE).read_bytes())
    size = 0
    for f in weight_files(root):
        n = f.stat().st_size
        size += n
        with open(f, "rb") as fh:
            digest.update(fh.read(2**20 + 2**16))
            if n > 2**21:
                fh.seek(n - 2**20)
                digest.update(fh.read())
    return {"path": str(root.resolve()), "sha256": digest.hexdigest()[:16], "weights_bytes": size}


# -- writing ---------------------------------------------------------------------------------------


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename inside ``path`` durable (POSIX); silently skipped where unsupported."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _is_disk_full(err: BaseException, path: Path) -> bool:
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    # torch.save reports ENOSPC as a RuntimeError ("unexpected pos ..." / "file write failed")
    # and safetensors as its own error, without the errno: look at the free space instead.
    probe = path if path.exists() else path.parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return shutil.disk_usage(probe).free < LOW_SPACE_BYTES
    except OSError:
        return False


@contextlib.contextmanager
def disk_guard(path: str | os.PathLike) -> Iterator[None]:
    """Re-raise a write failure caused by a full disk as ``DiskFullError`` naming ``path``."""
    try:
        yield
    except PixelLMError:
        raise
    except Exception as err:
        if _is_disk_full(err, Path(path)):
            raise DiskFullError(f"no space left on the device writing {path}") from err
        raise


@contextlib.contextmanager
def atomic_folder(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a hidden temporary folder next to ``final``; when the block ends normally, replace
    ``final`` with it in one rename. On an error the temporary folder is removed and ``final`` is
    left as it was. A full disk is reported as ``DiskFullError``."""
    final = Path(final)
    parent = final.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f".tmp-{final.name}"
    if tmp.exists():
        shutil.rmtree(tmp)  # left by a crash
    tmp.mkdir()
    try:
        with disk_guard(final):
            yield tmp
            for f in tmp.rglob("*"):
                if f.is_file():
                    with open(f, "rb") as fh:
                        os.fsync(fh.fileno())
            fsync_dir(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = parent / f".old-{final.name}"
    if final.exists():
        # os.replace cannot overwrite a non-empty folder: move the old one aside first
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
    os.replace(tmp, final)
    fsync_dir(parent)
    shutil.rmtree(old, ignore_errors=True)
