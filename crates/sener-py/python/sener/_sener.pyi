"""Type stubs of the Rust extension module `sener._sener`."""

from os import PathLike
from typing import Any, TypedDict

__version__: str

class Entity(TypedDict):
    start: int
    """First character (code points, as Python ``str`` indices)."""
    end: int
    """One past the last character."""
    text: str
    """``text[start:end]`` of the input."""
    label: str
    score: float
    """Symmetrised probability of the span and label."""

class Extractor:
    """A loaded SeNER model. Thread-safe; model work releases the GIL."""

    @property
    def labels(self) -> list[str]:
        """Entity types, in the model's order."""
    @property
    def config(self) -> dict[str, Any]:
        """The model's ``sener.json``."""
    def extract(self, text: str, threshold: float | None = None, flat: bool = False) -> list[Entity]:
        """Entities of one text of any length. ``threshold`` overrides the model's calibrated
        per-type thresholds; ``flat`` drops nested entities."""
    def extract_batch(
        self, texts: list[str], threshold: float | None = None, flat: bool = False, batch_size: int = 8
    ) -> list[list[Entity]]:
        """Entities of several texts, in input order."""

def load(model: str | PathLike[str], device: str = "cpu") -> Extractor:
    """Loads a model folder or a Hugging Face Hub id ``org/name[@revision]``."""

def evaluate(
    model: Extractor | str | PathLike[str],
    data: str | PathLike[str],
    format: str = "sener",
    raw: bool = False,
    threshold: float | None = None,
) -> dict[str, Any]:
    """The official metric (micro, macro, per type, per length), as ``sener eval`` computes it."""

def train(**config: Any) -> dict[str, Any]:
    """Trains with ``sener train``'s config keys; returns the run's report."""
