"""The ``opensmile`` audio extractor on wav files made here (numpy tones written with the stdlib ``wave``):
dims of eGeMAPS and IS10, determinism of the whole ``mercore extract`` file, and errors for missing audio.

Needs the ``opensmile`` package (the ``extract`` extra): skipped without it.
"""

from __future__ import annotations

import json
import wave
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("opensmile", reason="the 'extract' extra is not installed (pip install 'mercore[extract]')")

from mercore.cli import main  # noqa: E402
from mercore.errors import DataError  # noqa: E402
from mercore.extract import feature_identity, load_extract_recipe, run_extract  # noqa: E402
from mercore.nn.extractor import Conversation  # noqa: E402

from support import write_recipe  # noqa: E402


def write_tone(path: Path, hz: float, seconds: float = 0.6, rate: int = 16000) -> Path:
    """A mono 16-bit wav of a tone with a little seeded noise (a voiced-like signal openSMILE can analyse)."""
    t = np.arange(int(rate * seconds)) / rate
    noise = np.random.default_rng(int(hz)).normal(0, 0.01, t.shape)
    x = 0.4 * np.sin(2 * np.pi * hz * t) + 0.1 * np.sin(2 * np.pi * 2 * hz * t) + noise
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(x, -1, 1) * 32767).astype("<i2").tobytes())
    return path


@pytest.fixture
def audio_data(tmp_path) -> Path:
    (tmp_path / "wav").mkdir()
    lines = []
    for d, tones in enumerate([(120, 180), (220,), (300, 150, 260)]):
        audio = [f"wav/d{d}_{i}.wav" for i in range(len(tones))]
        for a, hz in zip(audio, tones):
            write_tone(tmp_path / a, hz)
        lines.append(json.dumps({"dialogue": f"d{d}", "speakers": ["A"] * len(tones), "texts": ["..."] * len(tones),
                                 "audio": audio}))
    (tmp_path / "dialogues.jsonl").write_text("\n".join(lines) + "\n")
    return tmp_path / "dialogues.jsonl"


def audio_recipe(tmp_path: Path, feature_set: str, output: str) -> Path:
    return write_recipe(tmp_path / f"{output}.yaml", f"""
input: {tmp_path / 'dialogues.jsonl'}
output: {tmp_path / output}
extractor: {{type: opensmile, feature_set: {feature_set}}}
dtype: float32
chunk: 2
progress: false
""")


@pytest.mark.parametrize("feature_set, dim", [("eGeMAPSv02", 88), ("IS10", 1582)])
def test_opensmile_features_have_the_feature_sets_dims_and_are_deterministic(tmp_path, audio_data, feature_set, dim):
    a = run_extract(load_extract_recipe(audio_recipe(tmp_path, feature_set, "a.safetensors")), log=lambda _: None)
    run_extract(load_extract_recipe(audio_recipe(tmp_path, feature_set, "b.safetensors")), log=lambda _: None)
    assert a.dim == dim and a.dialogues == 3 and a.utterances == 6
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()
    from safetensors import safe_open

    with safe_open(str(tmp_path / "a.safetensors"), framework="pt") as fh:
        assert fh.metadata()["modality"] == "audio" and fh.metadata()["dim"] == str(dim)
        x = fh.get_tensor("d2")
    assert x.shape == (3, dim) and torch.isfinite(x).all()
    assert not torch.equal(x[0], x[1])  # different tones, different features
    identity = feature_identity(tmp_path / "a.safetensors")
    assert identity["extractor"] == "opensmile" and identity["options"] == json.dumps({"feature_set": feature_set}).replace(" ", "")


def test_missing_audio_is_named(tmp_path, capsys):
    from mercore_extract.audio import OpenSmileConfig, OpenSmileExtractor

    ext = OpenSmileExtractor(OpenSmileConfig())
    with pytest.raises(DataError, match="dialogue 'x': utterance 0 has no audio path"):
        ext.extract([Conversation("x", ("A",), ("hi",))])
    with pytest.raises(DataError, match="dialogue 'x': utterance 1: audio file .*nope.wav does not exist"):
        ext.extract([Conversation("x", ("A", "B"), ("hi", "yo"), (str(write_tone(tmp_path / "ok.wav", 200)),
                                                                   str(tmp_path / "nope.wav")))])
    (tmp_path / "bad.wav").write_bytes(b"not a wav at all")
    with pytest.raises(DataError, match="dialogue 'x': utterance 0: cannot read audio file .*bad.wav"):
        ext.extract([Conversation("x", ("A",), ("hi",), (str(tmp_path / "bad.wav"),))])
    (tmp_path / "dialogues.jsonl").write_text('{"dialogue": "x", "speakers": ["A"], "texts": ["hi"]}\n')
    assert main(["extract", str(audio_recipe(tmp_path, "eGeMAPSv02", "c.safetensors"))]) == 2
    err = capsys.readouterr().err
    assert f"error: {tmp_path / 'dialogues.jsonl'}:1-1: dialogue 'x': utterance 0 has no audio path" in err
