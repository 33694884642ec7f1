"""sener: long-document named-entity extraction (SeNER) in Rust.

>>> import sener
>>> ex = sener.load("models/sener-minilm-scholarxl")
>>> for e in ex.extract("Jie Tang is a professor at Tsinghua University."):
...     print(e["label"], e["start"], e["end"], e["text"], round(e["score"], 2))

Offsets are Python ``str`` indices (code points, end exclusive): ``text[e["start"]:e["end"]] ==
e["text"]`` always. Model work runs in Rust with the GIL released.
"""

from os import PathLike
from typing import Union

from . import _sener
from ._sener import Extractor, __version__, evaluate, train

__all__ = ["Extractor", "load", "evaluate", "train", "__version__", "loads_in_this_process"]

_loads = 0


def load(model: Union[str, "PathLike[str]"], device: str = "cpu") -> Extractor:
    """Loads a model folder, or a Hugging Face Hub id ``org/name[@revision]``, on ``device``
    (``"cpu"`` or ``"cuda[:N]"``). Raises ``FileNotFoundError`` for a missing folder and
    ``ValueError`` for a folder that is not a valid model."""
    global _loads
    ex = _sener.load(model, device)
    _loads += 1
    return ex


def loads_in_this_process() -> int:
    """How many models this process has loaded (Ray actors report it: one load per actor)."""
    return _loads
