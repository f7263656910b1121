"""`s2d label` / `s2d eval`, strict JSONL reading, output files, and the `evaluate` module."""

import argparse
import json

import pytest

from s2d_align.labeler import OBSERVATIONS, label_report
from s2d_align.metrics import (compute_ce, compute_nlg, evaluate_module_path, evaluate_reports,
                               match_ids, read_reports)
from s2d_align.metrics.cli import register

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
                 "--ce-convention", "r2gen", "--no-meteor"]) == 0
    result = json.loads((out / "metrics.json").read_text())
    assert result["settings"] == {"ce_convention": "r2gen", "labeler": "rules", "references": "raw",
                                  "references_truncated": False, "text_cleaning": "iu_xray",
                                  "pycocoevalcap": result["settings"]["pycocoevalcap"]}
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
    assert (out / "ce_per_observation_f1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    labels = [json.loads(line) for line in (out / "labels.jsonl").read_text().splitlines()]
    assert [row["id"] for row in labels] == ["r1", "r2", "r3"]


def test_eval_cli_error_is_one_line(tmp_path, capsys):
    from s2d_align.cli import main

    preds, refs = _files(tmp_path)
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"id": "r1", "report": "x"}\n{oops\n')
    assert main(["eval", "--predictions", str(bad), "--references", refs, "--out", str(tmp_path / "o")]) == 2
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
    want = evaluate_reports(dict(zip(ids, preds)), dict(zip(ids, refs)), convention="example", meteor=False)
    assert got["BLEU_4"] == want["nlg"]["BLEU_4"] and got["ce_f1"] == want["ce"]["f1"]
    assert got["ce_convention"] == "example" and got["references"] == "raw"


def test_evaluate_reports_rejects_empty_reference_and_bad_kind():
    with pytest.raises(ValueError, match="empty reference"):
        evaluate_reports({"a": "x"}, {"a": " "}, meteor=False, radgraph=False)
    with pytest.raises(ValueError, match="references_kind"):
        evaluate_reports({"a": "x"}, {"a": "y"}, references_kind="truncated")


def test_radgraph_is_skipped_with_a_reason_when_missing():
    result = evaluate_reports({"a": "No effusion."}, {"a": "No pleural effusion."}, meteor=False)
    rg = result["radgraph"]
    assert ("skipped" in rg and "RadGraph F1 skipped" in rg["skipped"]) or {"simple", "partial", "complete"} <= set(rg)
