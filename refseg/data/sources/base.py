"""What the sources share: refs held in memory per split, samples listed from them on first use."""
from __future__ import annotations

from ...errors import DataError
from ..types import Ref, Sample, sort_splits


class RefsBySplit:
    """Base of the sources: ``splits``, ``refs`` and ``samples`` over ``self._refs`` (split -> refs in
    file order), which a subclass fills in its constructor; it gives ``_samples_of(ref)``.
    """

    name: str

    def __init__(self) -> None:
        self._refs: dict[str, list[Ref]] = {}
        self._samples: dict[str, list[Sample]] = {}

    def _samples_of(self, ref: Ref) -> list[Sample]:
        """One Sample per sentence of ``ref`` (the subclass knows its image and size)."""
        raise NotImplementedError

    def _location(self) -> str:
        """Appended to the source name in the unknown-split message (e.g. " in <refs file>")."""
        return ""

    def splits(self) -> list[str]:
        return sort_splits(self._refs)

    def _check_split(self, split: str) -> None:
        if split not in self._refs:
            raise DataError(f"unknown split '{split}' for {self.name}{self._location()}: "
                            f"valid splits are {', '.join(self.splits())}")

    def refs(self, split: str) -> list[Ref]:
        """The refs of ``split`` in file order."""
        self._check_split(split)
        return list(self._refs[split])

    def samples(self, split: str) -> list[Sample]:
        """Every (ref, sentence) pair of ``split`` in file order."""
        self._check_split(split)
        if split not in self._samples:
            self._samples[split] = [s for ref in self._refs[split] for s in self._samples_of(ref)]
        return list(self._samples[split])
