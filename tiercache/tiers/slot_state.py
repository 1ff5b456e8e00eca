"""The slot policies' state as named numpy arrays (``SlotPolicy.state``/``load_state``): what the SSD tier
writes at close to keep its eviction order across restarts (``ssd_order.py``). A policy hands itself over;
its fields are walked generically, so a field a policy gains is kept without a change here.
"""

from __future__ import annotations

import numpy as np

from .slot_lists import Ghost, Lists


def flatten(obj: object, prefix: str, out: dict[str, np.ndarray]) -> None:
    """``obj``'s fields into ``out``: arrays as they are, numbers as 0-d arrays, int lists as arrays, None as
    an empty float array, and the links and ghost objects (``slot_lists``) field by field."""
    for name, value in vars(obj).items():
        key = prefix + name
        if isinstance(value, np.ndarray):
            out["a:" + key] = value
        elif value is None:
            out["n:" + key] = np.zeros(0)
        elif isinstance(value, bool | int | float):
            out["s:" + key] = np.asarray(value)
        elif isinstance(value, list) and all(isinstance(v, int) for v in value):
            out["l:" + key] = np.asarray(value, np.int64)
        elif isinstance(value, tuple) and not value:
            out["t:" + key] = np.zeros(0)
        elif isinstance(value, (Lists, Ghost)):
            flatten(value, key + ".", out)
        else:
            raise TypeError(f"policy field {key} ({type(value).__name__}) is not persistable")


def assign(obj: object, name: str, value: np.ndarray) -> None:
    """Set the field ``name`` (as ``flatten`` named it) of ``obj`` from ``value``."""
    kind, path = name[:2], name[2:].split(".")
    for part in path[:-1]:
        obj = getattr(obj, part)
    if kind == "a:":
        item: object = value
    elif kind == "n:":
        item = None
    elif kind == "s:":
        item = value.item()
    elif kind == "l:":
        item = [int(v) for v in value]
    else:
        item = ()
    setattr(obj, path[-1], item)
