"""The SDMoE gate measured: active experts per token, masked top experts, logged per epoch; the experts-axis bound."""

from __future__ import annotations

import json
import math

import pytest
import torch

from mercore.recipe import load_recipe
from mercore.train import Trainer
from mercore_summer.moe import SDMoE, SigmaGumbelRouter


def sdmoe(num_experts: int, router: dict) -> SDMoE:
    from mercore.config import validate_node
    from mercore.plugins import get_registry

    node, problems = validate_node("moe", {"type": "sdmoe", "num_experts": num_experts, "router": router},
                                   get_registry())
    assert not problems, problems
    return node.build(dim=4, name="m")


def test_active_experts_and_masked_top_expert_on_hand_made_logits():
    # 10 tokens, 3 experts, tokens axis with the batch's own statistics. Token 9 = [10, 0, 0]: its expert-0 logit is
    # 3 std from expert 0's mean over tokens (z = 3 > c = 2), so expert 0, its top expert, is switched off.
    moe = sdmoe(3, {"type": "sigma_gumbel", "stat_axis": "tokens", "eval_stats": "batch"}).eval()
    logits = torch.zeros(10, 3)
    logits[9, 0] = 10.0
    routing = moe.router.route_logits(logits)
    assert routing.expert_idx[9].tolist() == [-1, 1, 2]
    stats = moe._stats(routing)
    assert stats["m.experts_per_token"] == pytest.approx((9 * 3 + 2) / 10)
    assert stats["m.top_masked"] == pytest.approx(0.1)
    # top-k never drops a token's top expert
    topk = sdmoe(3, {"type": "topk", "k": 1})
    assert topk._stats(topk.router.route_logits(torch.randn(20, 3)))["m.top_masked"] == 0.0


def test_experts_axis_bound_is_sqrt_e_minus_1():
    # The largest z-score (population std) among E values: one value apart from E-1 equal ones, z = sqrt(E-1).
    for e in (4, 6, 8):
        x = torch.zeros(e)
        x[0] = 1.0
        z = (x - x.mean()) / x.std(unbiased=False)
        assert float(z.max()) == pytest.approx(math.sqrt(e - 1))
        worst = torch.randn(2000, e) * torch.rand(2000, 1) * 100
        zs = (worst - worst.mean(1, keepdim=True)) / worst.std(1, unbiased=False, keepdim=True)
        assert float(zs.abs().max()) <= math.sqrt(e - 1) + 1e-5
    # so at c = 2 the per-utterance mask is a no-op at E = 4 and fires at E = 6 on an outlying logit
    four = SigmaGumbelRouter(SigmaGumbelRouter.Config(stat_axis="experts"), dim=4, num_experts=4).eval()
    assert four.route_logits(torch.tensor([[100.0, 0.0, 0.0, 0.0]])).used.all()
    six = SigmaGumbelRouter(SigmaGumbelRouter.Config(stat_axis="experts"), dim=4, num_experts=6).eval()
    assert six.route_logits(torch.tensor([[100.0, 0.0, 0.0, 0.0, 0.0, 0.0]])).expert_idx[0].tolist() == [-1, 1, 2, 3, 4, 5]


def test_stats_land_in_metrics_jsonl_per_epoch(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("""\
name: gate_stats
data: {type: synthetic, modalities: [text], seed: 0, num_dialogues: {train: 8, dev: 4, test: 4}, utterances: [3, 5]}
model:
  type: multimodal
  modalities: [text]
  hidden: 8
  encoder: {type: linear}
  moe: {type: sdmoe, num_experts: 4, router: {type: sigma_gumbel}, experts: {type: bigru}}
  head: {type: linear}
optimizer: {type: adam, lr: 1e-2}
trainer: {epochs: 2, batch_size: 4, device: cpu, progress: false, threads: 1}
""")
    Trainer(load_recipe(recipe, [f"output_dir={tmp_path / 'run'}"]), log=lambda _m: None).run()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2
    for r in records:
        keys = [k for k in r["stats"] if k.endswith(".experts_per_token")]
        assert keys, r["stats"]
        prefix = keys[0][: -len("experts_per_token")]
        assert 1.0 <= r["stats"][prefix + "experts_per_token"] <= 4.0
        assert 0.0 <= r["stats"][prefix + "top_masked"] <= 1.0
        assert sum(r["stats"][f"{prefix}load.{e}"] for e in range(4)) == pytest.approx(1.0)
