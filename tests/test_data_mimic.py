"""MIMIC-CXR: the raw MIMIC-CXR-JPG layout (synthetic fixture), R2Gen annotation mode, FINDINGS extraction."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from s2d_align.data.mimic_cxr import iso_date, load_mimic_cxr
from s2d_align.data.references import attach_references
from s2d_align.data.summary import SkipLog
from s2d_align.data.text import clean_report_mimic_cxr, extract_findings_section

FIXTURES = Path(__file__).resolve().parent / "fixtures"
RAW = FIXTURES / "data_mimic_raw"


def test_findings_section_extraction():
    text = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)
 INDICATION:  ___F with cough
 FINDINGS:

 Heart size is normal.  There is a small
 left pleural effusion.

 IMPRESSION:  Small effusion.
"""
    assert extract_findings_section(text) == "Heart size is normal. There is a small left pleural effusion."
    assert extract_findings_section("FINDINGS AND IMPRESSION: No acute process.\n") == "No acute process."
    assert extract_findings_section(" IMPRESSION: Normal.\n") == ""
    # a header without content yields "", not the next section
    assert extract_findings_section("FINDINGS:\n\nIMPRESSION: x\n") == ""


def test_study_date_format():
    assert iso_date("21800506") == "2180-05-06"
    assert iso_date("21800506.0") == "2180-05-06"
    assert iso_date("") == "" and iso_date("2180") == ""


def test_r2gen_mimic_cleaning():
    assert clean_report_mimic_cxr("Heart  size normal.\n No effusion__ seen..") == "heart size normal . no effusion seen ."


@pytest.fixture()
def raw_root(tmp_path):
    root = tmp_path / "mimic"
    shutil.copytree(RAW, root)
    return root


def test_raw_layout_one_sample_per_study(raw_root):
    skipped = SkipLog()
    dsd = load_mimic_cxr(mimic_root=raw_root, missing_images="skip", skipped=skipped)
    assert {s: sorted(dsd[s]["id"]) for s in dsd} == {
        "train": ["50414267", "50771383", "53189527", "53911762"], "validation": ["56699142"], "test": ["58000001"]}
    assert skipped.counts == {"empty findings": 1, "missing image": 1}
    assert skipped.examples == {"empty findings": ["57375967"], "missing image": ["54205396"]}
    row = dsd["train"][dsd["train"]["id"].index("50414267")]
    # the lateral is listed first in the metadata; the frontal view must come first
    assert row["view_positions"] == ["PA", "LATERAL"]
    assert [Path(p).name for p in row["image_paths"]] == ["d1-pa.jpg", "d1-lat.jpg"]
    assert row["image_paths"][0] == str(raw_root.resolve() / "files/p10/p10000032/s50414267/d1-pa.jpg")
    assert row["study_date"] == "2180-05-06" and row["subject_id"] == "10000032"
    assert row["report"] == ("SYNTHETIC 0. There is a small left pleural effusion. "
                             "The cardiomediastinal silhouette is normal. No pneumothorax.")
    other = dsd["train"][dsd["train"]["id"].index("53911762")]
    assert other["report"] == "SYNTHETIC 2. Mild cardiomegaly. No focal consolidation."


def test_raw_layout_missing_image_is_an_error_by_default(raw_root):
    with pytest.raises(FileNotFoundError, match=r"missing image .*d8-pa.jpg \(sample 54205396\)"):
        load_mimic_cxr(mimic_root=raw_root)


def test_raw_layout_same_patient_references(raw_root):
    dsd = attach_references(load_mimic_cxr(mimic_root=raw_root, missing_images="skip"), "same_patient")
    ref = {r["id"]: r["reference_id"] for s in dsd for r in dsd[s]}
    assert ref["53911762"] == "53189527"  # nearest earlier study (2180-07-20 -> 2180-06-26)
    assert ref["53189527"] == "50414267"
    assert ref["50414267"] == "53189527"  # first study: nearest later one
    assert ref["56699142"] == "53911762"  # validation sample, training reference
    assert ref["50771383"] == "" and ref["58000001"] == ""  # no other training study of these patients


def test_missing_metadata_and_bad_columns(raw_root):
    (raw_root / "mimic-cxr-2.0.0-split.csv").unlink()
    with pytest.raises(FileNotFoundError, match="mimic-cxr-2.0.0-split.csv"):
        load_mimic_cxr(mimic_root=raw_root, missing_images="skip")
    (raw_root / "mimic-cxr-2.0.0-split.csv").write_text("dicom_id,study_id,subject_id,fold\n")
    with pytest.raises(ValueError, match="split.csv: missing column 'split'"):
        load_mimic_cxr(mimic_root=raw_root, missing_images="skip")


def test_nothing_given_says_not_shipped():
    with pytest.raises(ValueError, match="MIMIC-CXR is not shipped"):
        load_mimic_cxr()


def test_r2gen_annotation_with_metadata(tmp_path, raw_root):
    ann = json.loads((FIXTURES / "mimic_annotation_schema_example.json").read_text())
    ann["train"][0]["id"] = "d1-pa"
    ann["train"][0]["image_path"] = ["p10/p10000032/s50414267/d1-pa.jpg"]
    ann["test"] = [{"id": "d6-pa", "study_id": 58000001, "subject_id": 10000764, "report": "No effusion.",
                    "image_path": ["p10/p10000764/s58000001/d6-pa.jpg"], "split": "test"},
                   {"id": "d7-pa", "report": "Heart normal.", "image_path": ["p10/p10000898/s50771383/d7-pa.jpg"],
                    "split": "test"}]
    path = tmp_path / "annotation.json"
    path.write_text(json.dumps(ann))
    dsd = load_mimic_cxr(path, mimic_root=raw_root, image_root=raw_root / "files")
    row = dsd["train"][0]
    assert (row["id"], row["subject_id"], row["study_id"]) == ("d1-pa", "10000032", "50414267")
    assert row["study_date"] == "2180-05-06" and row["view_positions"] == ["PA"]
    assert row["report"].startswith("SYNTHETIC PLACEHOLDER")
    # ids missing from the entry come from the image path
    test_row = dsd["test"][1]
    assert (test_row["subject_id"], test_row["study_id"]) == ("10000898", "50771383")
    # without the metadata: no dates, no views
    plain = load_mimic_cxr(path, image_root=raw_root / "files")
    assert plain["train"][0]["study_date"] == "" and plain["train"][0]["view_positions"] == [""]
