"""State-dict keys and shapes of every shipped recipe's model stay as they were: checkpoints of earlier runs load.

The digests were taken before the contracts moved into ``mercore.nn`` (commit 1d89665); a refactor that renames
a submodule changes a digest. When a change of keys is intended, say so in the change and update the digest.
"""

from __future__ import annotations

import hashlib
import json

import pytest

from mercore.recipe import load_recipe

from support import ROOT
#: Every modality at width 24, 6 classes, 3 speakers: the shapes then depend only on the recipe.
CONTEXT = dict(modality_dims={"text": 24, "audio": 24, "visual": 24}, num_classes=6, num_speakers=3,
               label_names=[str(i) for i in range(6)])

#: recipe -> first 16 hex digits of sha256(json(sorted((key, shape)))).
DIGESTS = {
    "recipes/ablation_no_hcmf_iemocap.yaml": "e3c50a0c7c3a416b",
    "recipes/ablation_no_ikd_iemocap.yaml": "82a0b7682a00f7d2",
    "recipes/ablation_no_sdmoe_iemocap.yaml": "699848df9349d0a2",
    "recipes/baseline_concat_iemocap.yaml": "487843b3fbc662e9",
    "recipes/baseline_concat_meld.yaml": "487843b3fbc662e9",
    "recipes/baseline_sdt_iemocap.yaml": "9ce1631c5dc209d1",
    "recipes/baseline_sdt_meld.yaml": "79d12dae25f58114",
    "recipes/baseline_text_iemocap.yaml": "cb53100682a7257c",
    "recipes/baseline_text_meld.yaml": "cb53100682a7257c",
    "recipes/demo_synthetic.yaml": "870dec3f21062635",
    "recipes/summer_iemocap.yaml": "82a0b7682a00f7d2",
    "recipes/summer_meld.yaml": "82a0b7682a00f7d2",
    "recipes/summer_teacher_iemocap.yaml": "416bc3c91b5340b7",
    "recipes/summer_teacher_meld.yaml": "416bc3c91b5340b7",
    "recipes/summer_text_iemocap.yaml": "c4787b6ed3fbdb2d",
    "recipes/summer_text_meld.yaml": "c4787b6ed3fbdb2d",
    "recipes/synthetic/concat.yaml": "7e3be751ed4c95cb",
    "recipes/synthetic/no_hcmf.yaml": "1fd2ee9f95a2ea5b",
    "recipes/synthetic/no_ikd.yaml": "1f458340dd0ecd6b",
    "recipes/synthetic/no_sdmoe.yaml": "a74bb1dac8979d03",
    "recipes/synthetic/sdt.yaml": "e005e9b5b7306953",
    "recipes/synthetic/summer.yaml": "1f458340dd0ecd6b",
    "recipes/synthetic/summer_teacher.yaml": "6c71f6895a108b88",
    "recipes/synthetic/text_only.yaml": "a28b546733087244",
    "recipes/text_bigru_iemocap.yaml": "b09cb897441ebdb5",
    "recipes/text_bigru_meld.yaml": "b09cb897441ebdb5",
    "recipes/text_sdmoe_iemocap.yaml": "c4787b6ed3fbdb2d",
    "recipes/text_sdmoe_meld.yaml": "c4787b6ed3fbdb2d",
    "recipes/text_transformer_iemocap.yaml": "5017c89b77b82982",
    "recipes/text_transformer_meld.yaml": "5017c89b77b82982",
}


def test_every_recipe_is_covered():
    shipped = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "recipes").rglob("*.yaml")
                     if p.parent != ROOT / "recipes" / "extract")  # extract recipes build no model
    assert shipped == sorted(DIGESTS), "a recipe was added or removed: add its digest (or drop it) here"


@pytest.mark.parametrize("recipe", sorted(DIGESTS))
def test_state_dict_keys_and_shapes_are_unchanged(recipe):
    model = load_recipe(ROOT / recipe, []).recipe.model.build(**CONTEXT)
    keys = sorted((k, list(v.shape)) for k, v in model.state_dict().items())
    digest = hashlib.sha256(json.dumps(keys).encode()).hexdigest()[:16]
    assert digest == DIGESTS[recipe], f"{recipe}: the model's state-dict keys or shapes changed; old checkpoints would not load"
