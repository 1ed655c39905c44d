import pytest
import torch

from mercore.metrics import classification_report, confusion_matrix


def test_hand_computed_example():
    gold = torch.tensor([0, 0, 0, 1, 1, 2])
    pred = torch.tensor([0, 0, 1, 1, 2, 2])
    r = classification_report(gold, pred, ["a", "b", "c"])
    # a: p=1 r=2/3 f1=0.8; b: p=1/2 r=1/2 f1=0.5; c: p=1/2 r=1 f1=2/3
    assert r["accuracy"] == pytest.approx(4 / 6)
    assert r["per_class_f1"] == pytest.approx({"a": 0.8, "b": 0.5, "c": 2 / 3})
    assert r["weighted_f1"] == pytest.approx((3 * 0.8 + 2 * 0.5 + 1 * 2 / 3) / 6)
    assert r["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert r["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]


def test_class_never_predicted_or_absent():
    r = classification_report(torch.tensor([0, 0, 1]), torch.tensor([0, 0, 0]), ["a", "b", "c"])
    assert r["per_class_f1"]["b"] == 0.0 and r["per_class_f1"]["c"] == 0.0
    assert r["macro_f1"] == pytest.approx((0.8 + 0.0) / 2)  # c is absent from gold: not averaged
    assert confusion_matrix(torch.tensor([2]), torch.tensor([0]), 3)[2, 0] == 1
