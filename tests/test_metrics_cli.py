"""`s2d label` / `s2d eval`, strict JSONL reading, output files, and the `evaluate` module."""

import argparse
import json

import pytest

from s2d_align.labeler import OBSERVATIONS, label_report
from s2d_align.metrics import (compute_ce, compute_nlg, evaluate_module_path, evaluate_reports,
                               match_ids, read_reports)
from s2d_align.metrics.cli import register
from s2d_align.metrics.report import metrics_markdown

REFS = {
    "r1": "The heart is normal in size. No pleural effusion or pneumothorax.",
    "r2": "Mild cardiomegaly. Small left pleural effusion. No pneumothorax.",
    "r3": "Lungs are clear. Opacity in the right base may represent atelectasis.",
}
PREDS = {
    "r1": "Heart size is normal. No pleural effusion.",
    "r2": "Cardiomegaly. No effusion.",
    "r3": "",  # an empty generation is scored, not dropped
}


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def _files(tmp_path):
    preds = _write(tmp_path / "preds.jsonl", [{"id": k, "report": v} for k, v in PREDS.items()])
    refs = _write(tmp_path / "refs.jsonl", [{"id": k, "report": v} for k, v in REFS.items()])
    return preds, refs


def _run(argv):
    parser = argparse.ArgumentParser(prog="s2d")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.mark.parametrize("content, message", [
    (b'{"id": "a", "report": "x"}\n{"id": "b", "report": \n', r":2: malformed JSON"),
    (b'{"id": "a", "report": "caf\xe9"}\n', r":1: not valid UTF-8"),
    (b'{"id": "a", "report": "x"}\n\n{"id": "a", "report": "y"}\n', r":3: duplicate id 'a' \(first on line 1\)"),
    (b'{"id": "a"}\n', r":1: missing key report"),
    (b'["a", "x"]\n', r":1: expected a JSON object"),
    (b'{"id": "a", "report": "  "}\n', r":1: empty report for id 'a'"),
    (b"\n\n", r"no reports"),
])
def test_read_reports_errors_name_file_and_line(tmp_path, content, message):
    path = tmp_path / "r.jsonl"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message) as err:
        read_reports(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_missing_ids_are_named(tmp_path):
    preds, refs = _files(tmp_path)
    extra = _write(tmp_path / "more.jsonl", [{"id": k, "report": v} for k, v in {**REFS, "r4": "x"}.items()])
    with pytest.raises(ValueError, match=r"more.jsonl:4 \(id 'r4'\): no prediction"):
        match_ids(read_reports(preds, allow_empty=True), read_reports(extra))
    with pytest.raises(ValueError, match=r"more.jsonl:4 \(id 'r4'\): no reference"):
        match_ids(read_reports(extra), read_reports(preds, allow_empty=True))


def test_eval_cli_writes_outputs(tmp_path, capsys):
    preds, refs = _files(tmp_path)
    out = tmp_path / "eval"
    assert _run(["eval", "--predictions", preds, "--references", refs, "--out", str(out),
                 "--ce-convention", "r2gen", "--no-meteor", "--clean", "iu_xray", "--bootstrap", "200"]) == 0
    result = json.loads((out / "metrics.json").read_text())
    assert {k: result["settings"][k] for k in ("ce_convention", "labeler", "references", "references_truncated",
                                                "text_cleaning", "text_cleaning_source")} == {
        "ce_convention": "r2gen", "labeler": "rules", "references": "raw", "references_truncated": False,
        "text_cleaning": "iu_xray", "text_cleaning_source": "given (--clean)"}
    assert result["intervals"]["settings"]["resamples"] == 200
    assert result["empty_predictions"] == ["r3"]
    assert "empty prediction" in capsys.readouterr().err
    # the numbers are those of the library functions on the same input
    assert result["nlg"]["BLEU_4"] == compute_nlg(PREDS, REFS, meteor=False)["BLEU_4"]
    expected_ce = compute_ce({k: label_report(v) for k, v in PREDS.items()},
                             {k: label_report(v) for k, v in REFS.items()}, "r2gen")
    assert result["ce"]["f1"] == expected_ce["f1"]
    md = (out / "metrics.md").read_text()
    assert "| B@1 | B@2 | B@3 | B@4 | MTR | RG-L | P | R | F1 |" in md
    assert "CE convention: r2gen | labeler: rules | references: raw" in md
    # the line right above each table with a CE column says it is not CheXbert-labelled
    lines = md.splitlines()
    for header in ("| B@1 | B@2 | B@3 | B@4 | MTR | RG-L | P | R | F1 |", "| observation | P | R | F1 | support |"):
        assert "rules labeler: not comparable with CheXbert-based tables" in lines[lines.index(header) - 2]
    assert (out / "ce_per_observation_f1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    labels = [json.loads(line) for line in (out / "labels.jsonl").read_text().splitlines()]
    assert [row["id"] for row in labels] == ["r1", "r2", "r3"]


def test_eval_cli_error_is_one_line(tmp_path, capsys):
    from s2d_align.cli import main

    preds, refs = _files(tmp_path)
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"id": "r1", "report": "x"}\n{oops\n')
    assert main(["eval", "--predictions", str(bad), "--references", refs, "--out", str(tmp_path / "o"),
                 "--clean", "iu_xray"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"{bad}:2: malformed JSON" in err


def test_label_cli(tmp_path):
    _, refs = _files(tmp_path)
    out = tmp_path / "labels.jsonl"
    assert _run(["label", "--reports", refs, "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == list(REFS)
    for row in rows:
        assert row["labeler"] == "rules"
        assert {o: row[o] for o in OBSERVATIONS} == label_report(REFS[row["id"]])


def test_label_cli_chexbert_unavailable_is_a_clear_error(tmp_path, monkeypatch):
    from s2d_align.labeler import chexbert

    monkeypatch.setattr(chexbert, "unavailable_reason", lambda: "CheXbert labeler unavailable: test")
    _, refs = _files(tmp_path)
    with pytest.raises(ValueError, match="CheXbert labeler unavailable"):
        _run(["label", "--reports", refs, "--out", str(tmp_path / "l.jsonl"), "--labeler", "chexbert"])


def test_evaluate_module_loads_offline_and_matches(monkeypatch):
    import evaluate

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    metric = evaluate.load(evaluate_module_path())
    preds, refs = list(PREDS.values()), list(REFS.values())
    got = metric.compute(predictions=preds, references=refs, meteor=False, ce_convention="example")
    ids = [f"{i:08d}" for i in range(3)]
    want = evaluate_reports(dict(zip(ids, preds)), dict(zip(ids, refs)), convention="example", meteor=False,
                            clean="iu_xray", bootstrap=0)
    assert got["BLEU_4"] == want["nlg"]["BLEU_4"] and got["ce_f1"] == want["ce"]["f1"]
    assert got["ce_convention"] == "example" and got["references"] == "raw"


def test_evaluate_reports_rejects_empty_reference_and_bad_kind():
    with pytest.raises(ValueError, match="empty reference"):
        evaluate_reports({"a": "x"}, {"a": " "}, meteor=False, radgraph=False, clean="iu_xray")
    with pytest.raises(ValueError, match="references_kind"):
        evaluate_reports({"a": "x"}, {"a": "y"}, references_kind="truncated", clean="iu_xray")


def test_radgraph_is_skipped_with_a_reason_when_missing():
    result = evaluate_reports({"a": "No effusion."}, {"a": "No pleural effusion."}, meteor=False, clean="iu_xray",
                              bootstrap=0)
    rg = result["radgraph"]
    assert ("skipped" in rg and "RadGraph F1 skipped" in rg["skipped"]) or {"simple", "partial", "complete"} <= set(rg)


# -- NLG cleaning follows the references' dataset ----------------------------------------------------------------------
MIMIC_REFS = {"m1": "FINDINGS:\nHeart size is normal.\nNo pleural effusion.", "m2": "Moderate cardiomegaly.\nNo edema."}
MIMIC_PREDS = {"m1": "Heart size is normal.\nNo effusion.", "m2": "Cardiomegaly.\nNo edema."}


def test_eval_without_provenance_or_clean_is_refused(tmp_path):
    preds, refs = _files(tmp_path)
    with pytest.raises(ValueError, match="--clean iu_xray|mimic_cxr"):
        _run(["eval", "--predictions", preds, "--references", refs, "--out", str(tmp_path / "o"), "--no-meteor"])


def test_eval_cleaner_from_jsonl_dataset_and_contradiction(tmp_path):
    preds = _write(tmp_path / "p.jsonl", [{"id": k, "report": v} for k, v in MIMIC_PREDS.items()])
    refs = _write(tmp_path / "r.jsonl", [{"id": k, "report": v, "dataset": "mimic_cxr"} for k, v in MIMIC_REFS.items()])
    out = tmp_path / "o"
    assert _run(["eval", "--predictions", preds, "--references", refs, "--out", str(out), "--no-meteor",
                 "--bootstrap", "0"]) == 0
    settings = json.loads((out / "metrics.json").read_text())["settings"]
    assert settings["text_cleaning"] == "mimic_cxr" and settings["text_cleaning_source"] == "from the references (mimic_cxr)"
    with pytest.raises(ValueError, match="contradicts"):
        _run(["eval", "--predictions", preds, "--references", refs, "--out", str(out), "--no-meteor", "--clean", "iu_xray"])


def test_eval_prepared_dataset_references_are_raw_and_give_the_cleaner(tmp_path):
    """A dataset prepared with --clean: the raw report is labelled and scored (through the MIMIC
    cleaner its summary implies), never the cleaned training target."""
    from datasets import Dataset, DatasetDict

    from s2d_align.metrics.text import clean_report_mimic_cxr

    raw = {"m1": "No focal consolidation, moderate left pleural effusion.", "m2": "No pneumothorax."}
    folder = tmp_path / "prepared"
    DatasetDict({"test": Dataset.from_dict({"id": list(raw), "report": [clean_report_mimic_cxr(t) for t in raw.values()],
                                            "report_raw": list(raw.values())})}).save_to_disk(str(folder))
    (folder / "prepare_summary.json").write_text(json.dumps({"options": {"dataset": "mimic_cxr", "clean": True}}))
    preds = _write(tmp_path / "p.jsonl", [{"id": "m1", "report": "Moderate left pleural effusion."},
                                          {"id": "m2", "report": "No pneumothorax."}])
    out = tmp_path / "o"
    assert _run(["eval", "--predictions", preds, "--references", str(folder), "--out", str(out), "--no-meteor",
                 "--bootstrap", "0"]) == 0
    result = json.loads((out / "metrics.json").read_text())
    assert result["settings"]["text_cleaning"] == "mimic_cxr"
    labels = {row["id"]: row for row in map(json.loads, (out / "labels.jsonl").read_text().splitlines())}
    assert labels["m1"]["reference"]["Pleural Effusion"] == 1  # the raw text's comma kept the effusion
    nlg = compute_nlg(PREDS_OF(preds), {k: clean_report_mimic_cxr(v) for k, v in raw.items()}, clean="mimic_cxr",
                      meteor=False)
    assert result["nlg"]["BLEU_1"] == pytest.approx(nlg["BLEU_1"], abs=1e-12)


def PREDS_OF(path):
    return dict(read_reports(path))


# -- intervals and the paired test ------------------------------------------------------------------------------------
def _iu_pairs(n=120):
    from importlib import resources

    ann = json.loads(resources.files("s2d_align").joinpath("resources", "iu_xray", "annotation.json").read_text())
    test = ann["test"][:n]
    refs = {e["id"]: e["report"] for e in test}
    shifted = {test[i]["id"]: test[(i + 1) % n]["report"] for i in range(n)}
    return refs, shifted


def test_every_interval_contains_its_point_estimate():
    refs, preds = _iu_pairs()
    result = evaluate_reports(preds, refs, clean="iu_xray", meteor=False, radgraph=False, bootstrap=300)
    iv = result["intervals"]
    for key, (lo, hi) in iv["nlg"].items():
        assert lo <= result["nlg"][key] <= hi, key
    for key in ("precision", "recall", "f1"):
        lo, hi = iv["ce"][key]
        assert lo <= result["ce"][key] <= hi and hi > lo, key
    for obs, row in iv["ce"]["per_observation"].items():
        assert row["f1"][0] <= result["ce"]["per_observation"][obs]["f1"] <= row["f1"][1], obs
    assert "[" in metrics_markdown(result).split("| B@1")[1]


def test_compare_self_gives_p_one_and_better_system_small_p(tmp_path):
    refs, shifted = _iu_pairs()
    refs_path = _write(tmp_path / "refs.jsonl", [{"id": k, "report": v, "dataset": "iu_xray"} for k, v in refs.items()])
    a = _write(tmp_path / "a.jsonl", [{"id": k, "report": v} for k, v in shifted.items()])
    # B: the reference itself for two studies in three, A's output otherwise: clearly better
    better = {k: (refs[k] if i % 3 else shifted[k]) for i, k in enumerate(sorted(refs))}
    b = _write(tmp_path / "b.jsonl", [{"id": k, "report": v} for k, v in better.items()])
    same = tmp_path / "same"
    assert _run(["eval", "--compare", a, a, "--references", refs_path, "--out", str(same), "--no-meteor",
                 "--bootstrap", "300"]) == 0
    rows = json.loads((same / "comparison.json").read_text())["comparison"]["metrics"]
    assert all(r["p_value"] == 1.0 and r["difference"] == 0 for r in rows.values())
    diff = tmp_path / "diff"
    assert _run(["eval", "--compare", a, b, "--references", refs_path, "--out", str(diff), "--no-meteor",
                 "--bootstrap", "300"]) == 0
    rows = json.loads((diff / "comparison.json").read_text())["comparison"]["metrics"]
    for key, alpha in (("BLEU_4", 0.01), ("ROUGE_L", 0.01), ("CIDEr", 0.01), ("CE_f1", 0.05)):
        assert rows[key]["difference"] > 0 and rows[key]["p_value"] < alpha, key
        assert rows[key]["difference_ci"][0] > 0, key
    assert "not comparable with CheXbert-based tables" in (diff / "comparison.md").read_text()
