"""Restricted unpickling for untrusted pickles (the refer ``refs(*).p`` files).

A pickle can call any importable function while loading (``os.system`` ...). This unpickler
refuses every global lookup and persistent id, so only what the pickle opcodes build by
themselves can come out: dicts, lists, tuples, strings, bytes, numbers, booleans and None.
"""

from __future__ import annotations

import io
import os
import pickle
from typing import Any, NoReturn

from pixellm.errors import DataError


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` refuses everything."""

    def find_class(self, module: str, name: str) -> NoReturn:
        raise pickle.UnpicklingError(
            f"refusing to load global '{module}.{name}' (only plain containers, numbers and strings)"
        )

    def persistent_load(self, pid: Any) -> NoReturn:
        raise pickle.UnpicklingError("refusing a persistent id")


def restricted_loads(data: bytes, encoding: str = "utf-8") -> Any:
    """Unpickle ``data`` allowing only plain data. ``encoding`` decodes Python 2 ``str`` values."""
    return RestrictedUnpickler(io.BytesIO(data), encoding=encoding).load()


def load_plain_pickle(path: str | os.PathLike) -> Any:
    """Load a pickle file of plain data; ``DataError`` naming the file for anything else.

    Python 2 pickles (the refer files) store text as byte strings: decode them as UTF-8 and
    fall back to latin-1 when they are not valid UTF-8.
    """
    path = str(path)
    with open(path, "rb") as f:
        data = f.read()
    try:
        try:
            return restricted_loads(data, "utf-8")
        except UnicodeDecodeError:
            return restricted_loads(data, "latin1")
    except Exception as err:  # corrupt pickles raise many exception types
        raise DataError(f"unsafe or corrupt pickle: {err}", path=path) from err
