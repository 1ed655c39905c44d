"""The data model: dialogues as readers produce them, and padded batches as components see them."""

from __future__ import annotations

from typing import Iterator, Sequence

import attrs
import torch

from mercore.errors import DataError

#: Label value at padded positions; equals ``torch.nn.functional.cross_entropy``'s default ignore_index.
PAD_LABEL = -100
SPLITS = ("train", "dev", "test")


@attrs.define
class Dialogue:
    """One conversation, unpadded.

    Attributes:
        id: the dialogue id of the source file (used in every error message).
        features: modality name -> float tensor ``(T, D_m)``.
        speakers: ``(T,)`` long, per-dialogue speaker index (0 = first to speak, in order of appearance).
        labels: ``(T,)`` long, class index, or :data:`PAD_LABEL` where an utterance has no label.
    """

    id: str
    features: dict[str, torch.Tensor]
    speakers: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@attrs.define
class Corpus:
    """What a dataset component's ``load()`` returns.

    Attributes:
        name: e.g. ``"iemocap"``.
        label_names: class index -> name.
        modality_dims: modality -> feature dim, for the modalities this corpus was loaded with.
        num_speakers: size of the speaker-embedding table the model needs.
        splits: ``"train"``/``"dev"``/``"test"`` -> dialogues.
        source: where the data came from (a path or ``"synthetic(seed=...)"``), for error messages and logs.
    """

    name: str
    label_names: list[str]
    modality_dims: dict[str, int]
    num_speakers: int
    splits: dict[str, list[Dialogue]]
    source: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    @property
    def modalities(self) -> list[str]:
        return list(self.modality_dims)

    def split(self, name: str) -> list[Dialogue]:
        if name not in self.splits:
            raise DataError(f"{self.source or self.name}: split {name!r} is missing (found: {sorted(self.splits)})")
        return self.splits[name]


@attrs.define
class DialogueBatch:
    """A padded batch of dialogues. ``B`` dialogues, ``T`` = longest dialogue.

    Attributes:
        features: modality -> ``(B, T, D_m)`` float, zero at padded positions.
        mask: ``(B, T)`` bool, True at real utterances.
        speakers: ``(B, T)`` long, 0 at padded positions (use ``mask``).
        labels: ``(B, T)`` long, :data:`PAD_LABEL` at padded or unlabelled positions.
        dialogue_ids: the ``B`` source ids.
    """

    features: dict[str, torch.Tensor]
    mask: torch.Tensor
    speakers: torch.Tensor
    labels: torch.Tensor
    dialogue_ids: list[str]

    @property
    def modalities(self) -> list[str]:
        return list(self.features)

    def to(self, device: torch.device | str) -> "DialogueBatch":
        """The batch on ``device``. The copies are non-blocking: from pinned memory (``collate(...,
        pin_memory=True)``) to CUDA they overlap with the host's work; otherwise they behave as plain copies."""
        return DialogueBatch(
            features={m: f.to(device, non_blocking=True) for m, f in self.features.items()},
            mask=self.mask.to(device, non_blocking=True),
            speakers=self.speakers.to(device, non_blocking=True),
            labels=self.labels.to(device, non_blocking=True),
            dialogue_ids=self.dialogue_ids,
        )


def collate(dialogues: Sequence[Dialogue], modalities: Sequence[str], *, pin_memory: bool = False) -> DialogueBatch:
    """Pad ``dialogues`` into a :class:`DialogueBatch` holding only ``modalities``; with ``pin_memory`` (for a
    CUDA run: needs CUDA) its tensors are allocated in page-locked memory, ready for an asynchronous copy.

    Raises:
        DataError: a dialogue lacks one of ``modalities``, or its feature length differs from its labels.
    """
    if not dialogues:
        raise DataError("cannot collate an empty list of dialogues")
    B, T = len(dialogues), max(len(d) for d in dialogues)
    dims: dict[str, int] = {}
    for m in modalities:
        for d in dialogues:
            if m not in d.features:
                raise DataError(
                    f"dialogue {d.id!r} has no {m!r} features (it has: {sorted(d.features)}); "
                    f"the recipe asks for modalities {list(modalities)}"
                )
        dims[m] = int(dialogues[0].features[m].shape[-1])
    pin = dict(pin_memory=True) if pin_memory else {}
    features = {m: torch.zeros(B, T, dims[m], **pin) for m in modalities}
    mask = torch.zeros(B, T, dtype=torch.bool, **pin)
    speakers = torch.zeros(B, T, dtype=torch.long, **pin)
    labels = torch.full((B, T), PAD_LABEL, dtype=torch.long, **pin)
    for i, d in enumerate(dialogues):
        n = len(d)
        for m in modalities:
            f = d.features[m]
            if f.shape != (n, dims[m]):
                raise DataError(
                    f"dialogue {d.id!r}: {m!r} features have shape {tuple(f.shape)}, expected ({n}, {dims[m]}) "
                    f"({n} utterances, feature dim {dims[m]} as in dialogue {dialogues[0].id!r})"
                )
            features[m][i, :n] = f.float()
        mask[i, :n] = True
        speakers[i, :n] = d.speakers
        labels[i, :n] = d.labels
    return DialogueBatch(features=features, mask=mask, speakers=speakers, labels=labels,
                         dialogue_ids=[d.id for d in dialogues])


def iterate_batches(
    dialogues: Sequence[Dialogue],
    modalities: Sequence[str],
    batch_size: int,
    *,
    generator: torch.Generator | None = None,
    pin_memory: bool = False,
) -> Iterator[DialogueBatch]:
    """Yield padded batches; shuffled by ``generator`` when one is given (a seeded generator = a fixed order);
    ``pin_memory``: collated into page-locked memory (see :func:`collate`)."""
    order = torch.randperm(len(dialogues), generator=generator).tolist() if generator is not None else range(len(dialogues))
    order = list(order)
    for start in range(0, len(order), batch_size):
        yield collate([dialogues[i] for i in order[start:start + batch_size]], modalities, pin_memory=pin_memory)
