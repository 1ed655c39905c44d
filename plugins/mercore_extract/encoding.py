"""A transformer's utterance vectors: tokenise, run, pick layers, pool. Shared by the text extractors.

An input is ``(target, context)``: the utterance to encode and, optionally, text it is encoded with (its
previous utterances). With a context the pair is tokenised as two segments and only the target's tokens are
pooled, so the vector stays the target utterance's.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from mercore.errors import ConfigError

POOLINGS = ("mean", "cls", "max")
COMBINES = ("mean", "concat")


def check_pooling(pooling: str, combine: str, layers: Sequence[int]) -> None:
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {list(POOLINGS)}, got {pooling!r}")
    if combine not in COMBINES:
        raise ValueError(f"combine must be one of {list(COMBINES)}, got {combine!r}")
    if not layers:
        raise ValueError("layers must name at least one layer (-1 = the last)")


def load_backbone(folder: Path, device: str, who: str):
    """``(tokenizer, model)`` of a local model folder, offline, the model on ``device``."""
    from mercore_extract.weights import require_transformers

    tf = require_transformers(who)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError([f"{who}: device {device!r} asked for, but CUDA is not available here (use device: cpu)"])
    tokenizer = tf.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    model = tf.AutoModel.from_pretrained(str(folder), local_files_only=True)
    return tokenizer, model.to(device)


def tokenize(tokenizer, inputs: Sequence[tuple[str, str | None]], max_length: int, device: str):
    """A padded batch and the ``(B, L)`` mask of each input's target tokens (all real tokens without context)."""
    targets = [t for t, _ in inputs]
    if any(c is not None for _, c in inputs):
        contexts = [c or "" for _, c in inputs]
        targets = _fit_targets(tokenizer, targets, max_length)
        # truncate the context first: the target utterance is what the vector is about
        enc = tokenizer(targets, contexts, padding=True, truncation="only_second", max_length=max_length,
                        return_tensors="pt")
        target_mask = torch.zeros_like(enc["attention_mask"])
        for b in range(len(inputs)):
            target_mask[b, :_first_segment_end(enc.sequence_ids(b)) + 1] = 1
    else:
        enc = tokenizer(targets, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        target_mask = enc["attention_mask"]
    return {k: v.to(device) for k, v in enc.items()}, target_mask.to(device)


def _fit_targets(tokenizer, targets: list[str], max_length: int) -> list[str]:
    """Each target cut at a token boundary so that, as the first segment of a pair, one context token still fits.

    ``truncation="only_second"`` cuts the context only, and raises ("Sequence to truncate too short") when a
    target alone is longer than ``max_length``; such a target is cut as it would be without a context. One
    batched tokeniser call for the whole batch; targets that fit are returned unchanged.
    """
    room = max_length - tokenizer.num_special_tokens_to_add(pair=True) - 1
    offsets = tokenizer(targets, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    return [t if len(o) <= room else t[:o[room - 1][1]] for t, o in zip(targets, offsets)]


def _first_segment_end(sequence_ids: list[int | None]) -> int:
    """Index of the special token closing the first segment (``[SEP]`` in ``[CLS] target [SEP] context [SEP]``):
    the target's tokens and the special tokens around them are what gets pooled."""
    seen_target = False
    for i, s in enumerate(sequence_ids):
        if s == 0:
            seen_target = True
        elif seen_target:
            return i
    return len(sequence_ids) - 1


def pool(hidden_states: Sequence[torch.Tensor], mask: torch.Tensor, *, layers: Sequence[int], combine: str,
         pooling: str, normalize: bool) -> torch.Tensor:
    """``(B, D)`` vectors from per-layer ``(B, L, H)`` hidden states (index 0 = embeddings, -1 = last layer)."""
    picked = [hidden_states[i] for i in layers]
    h = torch.stack(picked).mean(0) if combine == "mean" else torch.cat(picked, dim=-1)  # (B, L, D)
    m = mask.unsqueeze(-1).to(h.dtype)  # (B, L, 1)
    if pooling == "mean":
        v = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
    elif pooling == "cls":
        v = h[:, 0]
    else:
        v = h.masked_fill(m == 0, torch.finfo(h.dtype).min).max(1).values
    return torch.nn.functional.normalize(v, p=2, dim=1) if normalize else v


@torch.inference_mode()
def encode(tokenizer, model, inputs: Sequence[tuple[str, str | None]], *, layers: Sequence[int], combine: str,
           pooling: str, normalize: bool, max_length: int, batch_size: int, device: str) -> torch.Tensor:
    """``(N, D)`` float32 vectors of ``inputs``, in input order.

    Inputs are batched longest first (less padding); the order is a pure function of the inputs, so equal
    inputs give equal batches and equal bytes.
    """
    model.eval()
    order = sorted(range(len(inputs)), key=lambda i: (-len(inputs[i][0]) - len(inputs[i][1] or ""), i))
    out: list[torch.Tensor | None] = [None] * len(inputs)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        enc, mask = tokenize(tokenizer, [inputs[i] for i in idx], max_length, device)
        hs = model(**enc, output_hidden_states=True).hidden_states
        vecs = pool(hs, mask, layers=layers, combine=combine, pooling=pooling, normalize=normalize).float().cpu()
        for j, i in enumerate(idx):
            out[i] = vecs[j]
    return torch.stack(out) if out else torch.zeros(0, 0)


def utterance_inputs(speakers: Sequence[str], texts: Sequence[str], *, context: int, speaker: bool
                     ) -> list[tuple[str, str | None]]:
    """The ``(target, context)`` of each utterance of a conversation: ``"Speaker: text"`` when ``speaker``,
    with up to ``context`` previous utterances (oldest first) as the context when ``context > 0``."""
    lines = [f"{s}: {t}" if speaker else t for s, t in zip(speakers, texts)]
    if context <= 0:
        return [(line, None) for line in lines]
    return [(line, " ".join(lines[max(0, i - context):i])) for i, line in enumerate(lines)]
