"""The ``extractor`` contract: raw conversations in, one feature tensor per conversation out.

An extractor turns what a user has (utterance texts, speakers, optional audio files) into the per-utterance
features a dataset reads. ``mercore extract`` runs one over a ``dialogues.jsonl`` and writes a safetensors file
whose metadata is the extractor's :meth:`Extractor.identity`; ``mercore predict`` rebuilds the same extractor
from a run's recorded identity and refuses features made by a different one.

An ``extractor`` factory is called as ``factory(config)`` (no context) and returns an :class:`Extractor`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import attrs
import torch


@attrs.frozen
class Conversation:
    """One conversation as a user has it, before any feature exists.

    Attributes:
        dialogue: its id (the key of its tensor in a feature file).
        speakers: the speaker of each utterance, in order (names, e.g. ``"M"``, ``"Joey"``).
        texts: the text of each utterance, aligned with ``speakers``.
        audio: per utterance, the path of its audio file (None where it has none), or None for no audio at all.
    """

    dialogue: str
    speakers: tuple[str, ...]
    texts: tuple[str, ...]
    audio: tuple[str | None, ...] | None = None

    def __attrs_post_init__(self) -> None:
        if len(self.speakers) != len(self.texts):
            raise ValueError(f"dialogue {self.dialogue!r}: {len(self.speakers)} speakers for {len(self.texts)} texts")
        if self.audio is not None and len(self.audio) != len(self.texts):
            raise ValueError(f"dialogue {self.dialogue!r}: {len(self.audio)} audio paths for {len(self.texts)} texts")

    def __len__(self) -> int:
        return len(self.texts)


@runtime_checkable
class Extractor(Protocol):
    """Per-utterance features of whole conversations.

    Attributes:
        modality: the modality it produces (``"text"``, ``"audio"``), the key a dataset's ``features`` uses.
        dim: the feature width D of every row it returns.
    """

    modality: str
    dim: int

    def identity(self) -> dict[str, str]:
        """Everything that determines its output, as flat strings for safetensors metadata.

        At least ``extractor`` (the registered name), ``options`` (its config as canonical JSON), and
        ``weights_sha256`` (the hash of the weights it loaded; ``"none"`` for a parameter-free extractor).
        Two extractors with equal identities give equal features for equal input.
        """
        ...

    def extract(self, conversations: Sequence[Conversation]) -> list[torch.Tensor]:
        """One float32 ``(len(conversation), dim)`` tensor per conversation, in input order; deterministic."""
        ...


@runtime_checkable
class FittableExtractor(Extractor, Protocol):
    """Optional capability: an extractor that must first be trained on labelled conversations (a fine-tuned encoder).

    ``mercore extract`` calls :meth:`fit` before extracting when :meth:`needs_fit` is true, with the input's
    ``train`` and ``dev`` conversations and their labels (label names, None for unlabelled utterances); only
    then is :meth:`Extractor.identity` valid (its ``weights_sha256`` is the hash of the trained weights).
    """

    def needs_fit(self) -> bool:
        """True while the trained weights this extractor names do not exist yet."""
        ...

    def fit(self, train: Sequence[tuple[Conversation, Sequence[str | None]]],
            dev: Sequence[tuple[Conversation, Sequence[str | None]]]) -> None:
        """Train on ``train``, select on ``dev``, and save the trained weights where the config says."""
        ...


__all__ = ["Conversation", "Extractor", "FittableExtractor"]
