"""Labeler backends: the CheXbert backend never downloads and says why it cannot run."""

import builtins
import sys

import pytest

from s2d_align.labeler import OBSERVATIONS, get_labeler, label_reports
from s2d_align.labeler import chexbert


def test_rules_batch_labelling_matches_single():
    texts = ["No pneumothorax.", "Mild cardiomegaly."]
    assert label_reports(texts, "rules", progress=True) == [get_labeler("rules")(t) for t in texts]


def test_unknown_labeler():
    with pytest.raises(ValueError, match="unknown labeler"):
        get_labeler("negbio")


def test_chexbert_missing_package_is_reported(monkeypatch):
    real_import = builtins.__import__

    def no_f1chexbert(name, *args, **kwargs):
        if name.startswith("f1chexbert"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setitem(sys.modules, "f1chexbert", None)
    monkeypatch.setattr(builtins, "__import__", no_f1chexbert)
    reason = chexbert.unavailable_reason()
    assert "f1chexbert" in reason and "not installed" in reason
    with pytest.raises(RuntimeError, match="f1chexbert"):
        get_labeler("chexbert")


def test_chexbert_missing_weights_is_reported(monkeypatch, tmp_path):
    """With the package present but no weights on disk: a message naming the path, no download."""
    import types

    fake = types.ModuleType("f1chexbert.f1chexbert")
    fake.CACHE_DIR = str(tmp_path)
    pkg = types.ModuleType("f1chexbert")
    pkg.f1chexbert = fake
    monkeypatch.setitem(sys.modules, "f1chexbert", pkg)
    monkeypatch.setitem(sys.modules, "f1chexbert.f1chexbert", fake)
    reason = chexbert.unavailable_reason()
    assert str(tmp_path / "chexbert.pth") in reason and "never download" in reason


def test_chexbert_label_mapping():
    """CheXbert 'classification' output ('' blank, 1, 0, -1) maps onto our 1/0/-1/None."""
    labeler = chexbert.CheXbertLabeler.__new__(chexbert.CheXbertLabeler)

    class Model:
        def get_label(self, report, mode):
            assert mode == "classification"
            return ["", 1, 0, -1] + [""] * 9 + [1]

    labeler._model = Model()
    got = labeler("text")
    assert list(got) == list(OBSERVATIONS)
    assert [got[o] for o in OBSERVATIONS[:4]] == [None, 1, 0, -1] and got["No Finding"] == 1


def test_hub_offline_restores_state():
    import huggingface_hub.constants as c

    before = c.HF_HUB_OFFLINE
    with chexbert.hub_offline():
        assert c.HF_HUB_OFFLINE is True
    assert c.HF_HUB_OFFLINE == before
