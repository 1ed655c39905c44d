"""``opensmile``: utterance-level acoustic functionals of each utterance's wav file (openSMILE)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import attrs
import torch

from mercore.config import option
from mercore.errors import ConfigError, DataError
from mercore.nn.extractor import Conversation

#: Feature sets of the ``opensmile`` package (2.6), with their functional dims: eGeMAPS (88), IS10's
#: paralinguistic set (1582, the IEMOCAP audio features of the MERC literature), ComParE 2016 (6373).
FEATURE_SETS = ("eGeMAPSv02", "eGeMAPSv01b", "GeMAPSv01b", "ComParE_2016", "emobase",
                "IS09", "IS10", "IS11", "IS12", "IS13")


@attrs.define
class OpenSmileConfig:
    """Options of ``opensmile``."""

    feature_set: str = option("eGeMAPSv02", help=f"one of {', '.join(FEATURE_SETS)} (IS10: 1582-d, ComParE_2016: 6373-d)")

    def __attrs_post_init__(self) -> None:
        if self.feature_set not in FEATURE_SETS:
            raise ValueError(f"feature_set must be one of {list(FEATURE_SETS)}, got {self.feature_set!r}")


class OpenSmileExtractor:
    """openSMILE functionals (one vector per utterance) of the wav file each utterance names in ``audio``.

    Needs the ``opensmile`` package (``pip install 'mercore[extract]'``). Every utterance must have an audio
    path; a missing path or an unreadable file is a DataError naming the dialogue and utterance. Deterministic:
    openSMILE's functionals are a pure function of the samples.
    """

    Config = OpenSmileConfig
    modality = "audio"

    def __init__(self, config: OpenSmileConfig, **_: object):
        try:
            import opensmile
        except ImportError as exc:
            raise ConfigError([f"extractor 'opensmile' needs the 'opensmile' package ({exc}); install the extraction "
                               "extra: pip install 'mercore[extract]'"]) from None
        if not hasattr(opensmile.FeatureSet, config.feature_set):
            raise ConfigError([f"extractor.feature_set: {config.feature_set!r} is not offered by the installed "
                               f"opensmile {opensmile.__version__}"])
        self.config = config
        self.version = opensmile.__version__
        self.smile = opensmile.Smile(feature_set=getattr(opensmile.FeatureSet, config.feature_set),
                                     feature_level=opensmile.FeatureLevel.Functionals)
        self.dim = len(self.smile.feature_names)

    def identity(self) -> dict[str, str]:
        from mercore.extract import canonical_json

        # no weights; the openSMILE release is part of what fixes the numbers
        return {"extractor": "opensmile", "options": canonical_json({"feature_set": self.config.feature_set}),
                "weights_sha256": "none", "opensmile_version": self.version}

    def extract(self, conversations: Sequence[Conversation]) -> list[torch.Tensor]:
        return [torch.stack([self._utterance(conv, i) for i in range(len(conv))]) for conv in conversations]

    def _utterance(self, conv: Conversation, i: int) -> torch.Tensor:
        path = conv.audio[i] if conv.audio is not None else None
        if path is None:
            raise DataError(f"dialogue {conv.dialogue!r}: utterance {i} has no audio path (extractor 'opensmile' "
                            "needs an 'audio' list with a wav file for every utterance)")
        if not Path(path).is_file():
            raise DataError(f"dialogue {conv.dialogue!r}: utterance {i}: audio file {path} does not exist")
        try:
            frame = self.smile.process_file(str(path))
        except Exception as exc:  # opensmile/audiofile raise their own types for unreadable audio
            raise DataError(f"dialogue {conv.dialogue!r}: utterance {i}: cannot read audio file {path} ({exc})") from None
        return torch.from_numpy(frame.to_numpy(dtype="float32")[0].copy())
