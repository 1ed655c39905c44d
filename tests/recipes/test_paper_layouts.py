"""The paper's recipes run unchanged on pickles of exactly the standard IEMOCAP and MELD layouts.

``recipes/summer_iemocap.yaml`` and ``recipes/summer_meld.yaml`` are trained end to end, teacher stage included
(the recipe's ``stages.teacher`` trains ``summer_teacher_{corpus}.yaml`` into ``OUTPUT_DIR/teacher`` first), on fake
pickles written by :mod:`mercore_data.fake_pickles`: the public files' keys, types and feature dims, random
values, a handful of dialogues. The only overrides are the data path, the output directory (which also places
the teacher), one epoch, a CPU device and a small hidden size, for the student and (device and data path
inherited by the stage rule, the rest through ``stages.teacher.overrides``) for the teacher. The recipes use SDT's hidden size 1024, which also runs but
takes ~45 s for the two corpora on 2 CPU cores. The shapes that matter here are the inputs' (1024/1582/342 and
1024/300/342), and they stay as they are.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import mercore
from support import ROOT
from mercore.recipe import load_recipe
from mercore.stages import run_with_stages
from mercore_data.fake_pickles import IEMOCAP_DIMS, MELD_DIMS, write_fake_iemocap_pickle, write_fake_meld_pickle

TINY = ["trainer.epochs=1", "trainer.device=cpu", "trainer.progress=false", "model.hidden=32"]


@pytest.mark.parametrize("corpus, write, dims", [
    ("iemocap", write_fake_iemocap_pickle, IEMOCAP_DIMS),
    ("meld", write_fake_meld_pickle, MELD_DIMS),
])
def test_summer_recipe_runs_on_the_standard_pickle_layout(tmp_path: Path, monkeypatch, corpus, write, dims):
    monkeypatch.chdir(tmp_path)  # the stage recipe is found relative to the declaring recipe's folder
    pickle_path = write(tmp_path / f"{corpus}.pkl", num_dialogues=10, seed=0)
    run_dir = tmp_path / "summer"
    # The stage's own overrides in the recipe (the dev split) plus the tiny ones that are not inherited.
    stage_overrides = ["data.dev_ratio=${data.dev_ratio}", "data.dev_seed=${data.dev_seed}",
                       "trainer.epochs=1", "model.hidden=32"]
    loaded = load_recipe(ROOT / "recipes" / f"summer_{corpus}.yaml", overrides=[
        f"data.path={pickle_path}", f"output_dir={run_dir}", *TINY,
        f"stages.teacher.overrides={json.dumps(stage_overrides)}"])
    assert loaded.recipe.distiller.name == "ikd"
    assert loaded.data["distiller"]["teacher"] == f"{run_dir}/teacher"

    results = run_with_stages(loaded, log=lambda _msg: None)

    teacher = json.loads((run_dir / "teacher" / "results.json").read_text())  # stage 1 ran, text only
    assert teacher["modalities"] == ["text"] and teacher["epochs_run"] == 1
    assert json.loads((run_dir / "results.json").read_text()) == json.loads(json.dumps(results))
    assert results["modalities"] == ["text", "audio", "visual"]
    assert len(results["label_names"]) == (6 if corpus == "iemocap" else 7)
    assert results["epochs_run"] == 1 and 0.0 <= results["test"]["weighted_f1"] <= 1.0
    assert (run_dir / "confusion_matrix_test.png").exists()
    # the model was built on the pickle's real feature dims, and the saved run loads back
    assert mercore.load(run_dir).modality_dims == dims
    assert mercore.load(run_dir / "teacher").modality_dims == {"text": dims["text"]}
