"""``mercore extract``: the feature file, its identity, resume after a real kill, refusals and input errors.

Runs on a weight-free toy extractor (tests/toy_components.py:ToyExtractor), so it needs none of the
``extract`` extra; the real extractors are tested in tests/plugins/mercore_extract.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from mercore.cli import main
from mercore.errors import DataError, RegistryError
from mercore.extract import (LEGACY_IDENTITIES, extractor_from_identity, feature_identity, load_extract_recipe,
                             parts_dir, read_conversations, run_extract)
from mercore.nn.extractor import Conversation

from support import write_recipe
from toy_components import ToyExtractor

TOY = "toy_components:ToyExtractor"


def write_dialogues(path: Path, n: int = 7) -> Path:
    """``n`` labelled dialogues of 2-5 utterances, splits train/dev/test in turn."""
    lines = []
    for i in range(n):
        T = 2 + i % 4
        lines.append(json.dumps({"dialogue": f"d{i}", "split": ("train", "dev", "test")[i % 3],
                                 "speakers": [("A", "B")[t % 2] for t in range(T)],
                                 "texts": [f"utterance {t} of dialogue {i}" for t in range(T)],
                                 "labels": [("happy", "sad")[(i + t) % 2] for t in range(T)]}))
    path.write_text("\n".join(lines) + "\n")
    return path


def extract_recipe(tmp_path: Path, name: str = "recipe.yaml", *, output: str = "out/toy.safetensors", salt: str = "",
                   sleep: float = 0.0, chunk: int = 2, dtype: str = "float16") -> Path:
    return write_recipe(tmp_path / name, f"""
input: {tmp_path / 'dialogues.jsonl'}
output: {tmp_path / output}
extractor: {{type: "{TOY}", dim: 4, salt: "{salt}", sleep: {sleep}}}
chunk: {chunk}
dtype: {dtype}
progress: false
""")


@pytest.fixture
def data(tmp_path):
    return write_dialogues(tmp_path / "dialogues.jsonl")


def test_extract_writes_one_tensor_per_dialogue_with_the_identity_and_the_jsonl_dataset_reads_it(tmp_path, data, capsys):
    assert main(["extract", str(extract_recipe(tmp_path))]) == 0
    assert "wrote" in capsys.readouterr().out
    out = tmp_path / "out" / "toy.safetensors"
    assert not parts_dir(out).exists()  # the parts are removed once assembled
    rows = read_conversations(data)
    expected = ToyExtractor(ToyExtractor.Config(dim=4)).extract([r.conversation for r in rows])
    with safe_open(str(out), framework="pt") as fh:
        assert fh.metadata() == {**ToyExtractor(ToyExtractor.Config(dim=4)).identity(),
                                 "modality": "text", "dim": "4", "dtype": "float16"}
        assert sorted(fh.keys()) == sorted(r.conversation.dialogue for r in rows)
        for r, e in zip(rows, expected):
            got = fh.get_tensor(r.conversation.dialogue)
            assert got.dtype == torch.float16 and torch.equal(got, e.half())

    from mercore_data.jsonl import JsonlConfig, JsonlDataset

    corpus = JsonlDataset(JsonlConfig(root=str(tmp_path), features={"text": "out/toy.safetensors"},
                                      labels=["happy", "sad"])).load()
    assert corpus.modality_dims == {"text": 4}
    d0 = next(d for d in corpus.splits["train"] if d.id == "d0")
    assert torch.equal(d0.features["text"], expected[0].half().float())
    assert feature_identity(out) == ToyExtractor(ToyExtractor.Config(dim=4)).identity()


def test_a_second_run_is_up_to_date_and_float32_is_stored_as_asked(tmp_path, data, capsys):
    assert main(["extract", str(extract_recipe(tmp_path))]) == 0
    before = (tmp_path / "out" / "toy.safetensors").read_bytes()
    parts_dir(tmp_path / "out" / "toy.safetensors").mkdir()  # as a kill right after the assembly's rename leaves it
    assert main(["extract", str(extract_recipe(tmp_path))]) == 0
    assert not parts_dir(tmp_path / "out" / "toy.safetensors").exists()
    assert "up to date (7 dialogues)" in capsys.readouterr().out
    assert (tmp_path / "out" / "toy.safetensors").read_bytes() == before
    assert main(["extract", str(extract_recipe(tmp_path)), "dtype=float32"]) == 2
    assert "stored as float16, not float32" in capsys.readouterr().err
    assert main(["extract", str(extract_recipe(tmp_path, output="f32.safetensors", dtype="float32"))]) == 0
    with safe_open(str(tmp_path / "f32.safetensors"), framework="pt") as fh:
        assert fh.get_tensor("d0").dtype == torch.float32


def test_a_real_kill_then_resume_gives_the_byte_identical_file(tmp_path, data, subprocess_env):
    # Uninterrupted reference (same chunking: the plan of a resumable run includes the chunk size).
    assert main(["extract", str(extract_recipe(tmp_path, "ref.yaml", output="ref.safetensors", chunk=1))]) == 0
    recipe = extract_recipe(tmp_path, output="killed.safetensors", chunk=1, sleep=0.3)
    out = tmp_path / "killed.safetensors"
    proc = subprocess.Popen([sys.executable, "-m", "mercore", "extract", str(recipe)], env=subprocess_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while len(list(parts_dir(out).glob("part-*.safetensors"))) < 2:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the extraction wrote no parts in 120 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    done = len(list(parts_dir(out).glob("part-*.safetensors")))
    assert not out.exists() and 2 <= done < 7
    summary = run_extract(load_extract_recipe(recipe, ["extractor.sleep=0.0"]), log=lambda _: None)
    assert summary.reused_chunks == done and summary.computed_chunks == 7 - done
    assert out.read_bytes() == (tmp_path / "ref.safetensors").read_bytes()
    assert not parts_dir(out).exists()


def test_partial_or_existing_features_of_another_extractor_are_refused(tmp_path, data, capsys):
    recipe = extract_recipe(tmp_path, output="mixed.safetensors")
    out = tmp_path / "mixed.safetensors"
    # a partial extraction by salt 'a': its plan and one part, as a kill would leave them
    loaded = load_extract_recipe(recipe, ["extractor.salt=a"])
    from mercore.extract import _prepare_parts

    ext = loaded.extractor.build()
    meta = {**ext.identity(), "modality": "text", "dim": "4", "dtype": "float16"}
    from mercore.extract import sha256_of_files

    _prepare_parts(parts_dir(out), {"metadata": meta, "input_sha256": sha256_of_files([data]), "chunk": 2,
                                    "dialogues": 7}, out)
    assert main(["extract", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert f"{parts_dir(out)}: a partial extraction by extractor '{TOY}' with options " \
           '{"dim":4,"salt":"a"}' in err
    assert "features of two extractors are never mixed" in err and not out.exists()
    # the same extractor resumes from it
    assert main(["extract", str(recipe), "extractor.salt=a"]) == 0
    capsys.readouterr()
    assert main(["extract", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert f"{out} already exists and holds features of extractor '{TOY}' with options " + '{"dim":4,"salt":"a"}' in err
    assert "features of two extractors are never mixed" in err


def test_a_changed_input_does_not_resume_old_parts(tmp_path, data, capsys):
    recipe = extract_recipe(tmp_path)
    loaded = load_extract_recipe(recipe)
    out = Path(loaded.output)
    from mercore.extract import _prepare_parts, sha256_of_files

    meta = {**loaded.extractor.build().identity(), "modality": "text", "dim": "4", "dtype": "float16"}
    _prepare_parts(parts_dir(out), {"metadata": meta, "input_sha256": sha256_of_files([data]), "chunk": 2,
                                    "dialogues": 7}, out)
    write_dialogues(data, n=5)
    assert main(["extract", str(recipe)]) == 2
    assert "with another dialogues, input_sha256 is there (the input file or the chunk size changed)" in \
        capsys.readouterr().err


@pytest.mark.parametrize("line, message", [
    ('{"dialogue": "x", "speakers": ["A"]}', "dialogue 'x': 'texts': missing"),
    ('{"dialogue": "x", "speakers": ["A"], "texts": "hi"}', "dialogue 'x': 'texts': expected a list, got str"),
    ('{"dialogue": "x", "speakers": ["A", "B"], "texts": ["hi"]}', "dialogue 'x': 2 speakers for 1 texts"),
    ('{"dialogue": "x", "speakers": ["A"], "texts": [3]}', "dialogue 'x': texts[0] must be a string, got 3"),
    ('{"speakers": ["A"], "texts": ["hi"]}', "'dialogue': missing or invalid dialogue id None"),
    ('{"dialogue": "x", "speakers": ["A"], "texts": ["hi"], "audio": ["a.wav", "b.wav"]}',
     "dialogue 'x': 2 audio paths for 1 texts"),
    ('{"dialogue": "d0", "speakers": ["A"], "texts": ["hi"]}', "dialogue 'd0': duplicate dialogue id (first on line 1)"),
    ("{not json", "not valid JSON"),
    ("[1, 2]", "expected a JSON object, got list"),
])
def test_a_bad_input_line_is_named_by_file_and_line(tmp_path, capsys, line, message):
    data = tmp_path / "dialogues.jsonl"
    data.write_text('{"dialogue": "d0", "speakers": ["A"], "texts": ["hello"]}\n\n' + line + "\n")
    assert main(["extract", str(extract_recipe(tmp_path))]) == 2
    err = capsys.readouterr().err
    assert f"error: {data}:3: {message}" in err, err


def test_audio_paths_are_read_relative_to_the_input_file(tmp_path):
    data = tmp_path / "dialogues.jsonl"
    data.write_text('{"dialogue": 7, "speakers": ["A", "B"], "texts": ["a", "b"], "audio": ["wav/1.wav", null]}\n')
    (row,) = read_conversations(data)
    assert row.conversation == Conversation("7", ("A", "B"), ("a", "b"), (str(tmp_path / "wav" / "1.wav"), None))
    assert row.split is None and row.labels is None


def test_feature_identity_reads_new_and_legacy_metadata(tmp_path):
    save_file({"d": torch.zeros(2, 3)}, str(tmp_path / "plain.safetensors"))
    assert feature_identity(tmp_path / "plain.safetensors") is None
    save_file({"d": torch.zeros(2, 3)}, str(tmp_path / "legacy.safetensors"),
              metadata={"dtype": "float16", "dim": "384", "encoder": "sentence-transformers/all-MiniLM-L6-v2"})
    assert feature_identity(tmp_path / "legacy.safetensors") == LEGACY_IDENTITIES["sentence-transformers/all-MiniLM-L6-v2"]
    save_file({"d": torch.zeros(2, 3)}, str(tmp_path / "other.safetensors"), metadata={"encoder": "something else"})
    assert feature_identity(tmp_path / "other.safetensors") is None
    with pytest.raises(DataError, match="missing.safetensors: feature file does not exist"):
        feature_identity(tmp_path / "missing.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 3)
    with pytest.raises(DataError, match="bad.safetensors: not a readable safetensors file"):
        feature_identity(tmp_path / "bad.safetensors")


def test_extractor_from_identity_rebuilds_the_same_extractor_or_says_why_not(registry):
    identity = ToyExtractor(ToyExtractor.Config(dim=4, salt="s")).identity()
    rebuilt = extractor_from_identity(identity, registry)
    assert isinstance(rebuilt, ToyExtractor) and rebuilt.identity() == identity
    conv = Conversation("d", ("A",), ("hi",))
    assert torch.equal(rebuilt.extract([conv])[0], ToyExtractor(ToyExtractor.Config(dim=4, salt="s")).extract([conv])[0])

    with pytest.raises(RegistryError) as info:
        extractor_from_identity({**identity, "extractor": "no_such_extractor"}, registry)
    assert "made by extractor 'no_such_extractor', which is not installed here" in str(info.value)
    assert "pip install 'mercore[extract]'" in str(info.value)
    with pytest.raises(DataError) as info:
        extractor_from_identity({**identity, "weights_sha256": "ab" * 32}, registry)
    assert f"loads weights with sha256 none, but the features were made with weights of sha256 {'ab' * 32}" in str(info.value)
    with pytest.raises(DataError, match="identity\\(\\) lacks \\['weights_sha256'\\]"):
        extractor_from_identity({"extractor": TOY, "options": "{}"}, registry)
