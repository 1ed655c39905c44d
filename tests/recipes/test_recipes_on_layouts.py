"""The SUMMER, SDT-baseline and ablation recipes build and train one step on a fake file of every public layout.

Tiny fakes (a few dialogues, feature dims 8/6/4, ``model.hidden=16``) keep this fast; the layouts' real item
order, container types and (in ``test_pickle_layouts``) dims are what the readers see. ``expected_dims`` is
removed because the dims are tiny. IKD recipes first train their text teacher stage (one epoch, ``mercore.stages``);
the stage gets the same data options through ``stages.teacher.overrides``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from mercore.data.types import iterate_batches
from mercore.errors import DataError
from mercore.recipe import load_recipe
from mercore.stages import plan_stages, run_stages
from mercore.train import build_components, forward_batch, seed_everything
from mercore_data.fake_pickles import write_fake_pickle

from support import ROOT
TINY_DIMS = {"text": 8, "audio": 6, "visual": 4}
TINY = ["trainer.epochs=1", "trainer.device=cpu", "trainer.progress=false", "trainer.threads=1", "model.hidden=16",
        "~data.expected_dims"]
MULTIMODAL = {"iemocap": ["summer_iemocap", "baseline_sdt_iemocap", "ablation_no_hcmf_iemocap",
                          "ablation_no_ikd_iemocap", "ablation_no_sdmoe_iemocap"],
              "meld": ["summer_meld", "baseline_sdt_meld"]}
#: (corpus, how the data is given); "cosmic+mmgcn": text from COSMIC's file, audio/visual from MMGCN's.
SOURCES = {"iemocap": ["mmgcn", "sdt", "multiemo", "cosmic+mmgcn"],
           "meld": ["mmgcn", "dialoguegcn", "sdt", "multiemo", "cosmic+mmgcn"]}
CASES = [(corpus, recipe, source) for corpus, recipes in MULTIMODAL.items() for recipe in recipes
         for source in SOURCES[corpus]]
TEXT_ONLY = [(corpus, recipe, "cosmic") for corpus in ("iemocap", "meld")
             for recipe in (f"baseline_text_{corpus}", f"summer_teacher_{corpus}")]


def data_overrides(tmp_path: Path, corpus: str, source: str) -> list[str]:
    """Write the fake file(s) of ``source`` and return the data.* overrides that read them."""
    write = lambda name, layout: write_fake_pickle(tmp_path / name, corpus, layout, num_dialogues=8, seed=1,
                                                   utterances=(2, 4), dims=TINY_DIMS)
    if source == "cosmic+mmgcn":
        main, text = write("MMGCN.pkl", "mmgcn"), write("roberta.pkl", "cosmic")
        return [f"data.path={main}", f"data.text_file={text}"]
    path = write(f"{source}.pkl", source)
    out = [f"data.path={path}", f"data.layout={source}"]
    if source == "multiemo":
        files = {m: str(tmp_path / f"{m.capitalize()}Features.pkl") for m in ("text", "audio", "visual")}
        out.append(f"data.feature_files={json.dumps(files)}")
    if source == "dialoguegcn":  # no visual features in DialogueGCN's MELD file
        out.append("data.modalities=[text, audio]")
    return out


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one torch thread is fastest, and the only sane choice on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def one_step(recipe: str, overrides: list[str]) -> dict[str, float]:
    loaded = load_recipe(ROOT / "recipes" / f"{recipe}.yaml", overrides=overrides)
    run_stages(plan_stages(loaded), log=lambda _: None)  # the IKD teacher, as `mercore run` trains it first
    seed_everything(0)
    c = build_components(loaded.recipe)
    params = list(c.model.named_parameters())
    if c.distiller is not None:
        params += [(f"distiller.{n}", p) for n, p in c.distiller.named_parameters()]
    optimizer = loaded.recipe.optimizer.build(params=params)
    batch = next(iterate_batches(c.corpus.split("train"), c.modalities, 2))
    c.model.train()
    before = [p.detach().clone() for _, p in params if p.requires_grad]
    out, terms = forward_batch(c, batch)
    total = sum(terms.values())
    assert math.isfinite(float(total.detach()))
    optimizer.zero_grad()
    total.backward()
    optimizer.step()
    after = [p.detach() for _, p in params if p.requires_grad]
    assert any(not torch.equal(a, b) for a, b in zip(before, after)), "one step changed no parameter"
    assert out.logits.shape[:2] == batch.labels.shape
    return {k: float(v.detach()) for k, v in terms.items()}


def teacher_overrides(data: list[str]) -> list[str]:
    teacher_data = [o for o in data if not o.startswith("data.modalities=") and not o.startswith("data.feature_files")]
    if any(o.startswith("data.feature_files") for o in data):  # the teacher reads only the text file
        files = json.loads(next(o for o in data if o.startswith("data.feature_files")).split("=", 1)[1])
        teacher_data.append(f"data.feature_files={json.dumps({'text': files['text']})}")
    return [*teacher_data, "data.modalities=[text]", *TINY]  # seed and data.path are inherited


@pytest.fixture(scope="module")
def teachers(tmp_path_factory) -> Path:
    """One text teacher per (corpus, source), shared by the IKD recipes (the fakes are identical per source)."""
    return tmp_path_factory.mktemp("teachers")


@pytest.mark.parametrize("corpus, recipe, source", CASES + TEXT_ONLY)
def test_recipe_trains_one_step_on_layout(tmp_path, teachers, corpus, recipe, source):
    data = data_overrides(tmp_path, corpus, source)
    overrides = [*data, *TINY, f"output_dir={tmp_path / 'run'}"]
    if recipe.startswith("summer_") and "teacher" not in recipe or recipe in ("ablation_no_hcmf_iemocap",
                                                                            "ablation_no_sdmoe_iemocap"):
        overrides += [f"stages.teacher.output_dir={teachers / f'{corpus}-{source}'}",
                      f"stages.teacher.overrides={json.dumps(teacher_overrides(data))}"]
    terms = one_step(recipe, overrides)
    assert "task" in terms


def test_multimodal_recipe_on_a_text_only_file_is_a_clear_error(tmp_path):
    path = write_fake_pickle(tmp_path / "roberta.pkl", "iemocap", "cosmic", num_dialogues=6, dims=TINY_DIMS)
    loaded = load_recipe(ROOT / "recipes" / "baseline_sdt_iemocap.yaml",
                         overrides=[f"data.path={path}", *TINY, f"output_dir={tmp_path / 'run'}"])
    with pytest.raises(DataError, match="roberta.pkl.*'audio'"):
        build_components(loaded.recipe)
