"""MIMIC-CXR: the raw MIMIC-CXR-JPG layout (synthetic fixture), R2Gen annotation mode, FINDINGS extraction."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from s2d_align.data.mimic_cxr import iso_date, load_mimic_cxr
from s2d_align.data.references import attach_references
from s2d_align.data.summary import SkipLog
from s2d_align.data.text import clean_report_mimic_cxr, extract_findings_section, is_findings_header, report_sections
from s2d_align.data.views import ViewLog

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
    assert extract_findings_section(" FINAL REPORT\n IMPRESSION: Normal.\n") == ""
    # a header without content yields "", not the next section
    assert extract_findings_section(" FINAL REPORT\n FINDINGS:\n\n IMPRESSION: x\n") == ""


# One report per rule of the official MIMIC-CXR section parser (see `extract_findings_section`'s docstring).
HEAD = "                                 FINAL REPORT\n INDICATION:  Cough.\n"


@pytest.mark.parametrize("body, findings", [
    # 1. a header starts a line that begins with a space: without it, or on the first line, it is text
    (" FINDINGS:  Lungs clear.\n IMPRESSION:  Normal.\n", "Lungs clear."),
    ("FINDINGS:  Lungs clear.\n IMPRESSION:  Normal.\n", ""),  # no leading space: still INDICATION's text
    (" FINDINGS 2:  Lungs clear.\n", ""),  # digits are not header characters
    (" FINDINGS:Lungs clear.\n", ""),  # the colon must be followed by whitespace
    # 2. when the colon ends the line, a header on the very next line belongs to the section
    (" FINDINGS:\n PORTABLE AP:  Lungs clear.\n IMPRESSION:  Normal.\n", "PORTABLE AP: Lungs clear."),
    (" FINDINGS:\n \n PORTABLE AP:  Lungs clear.\n IMPRESSION:  Normal.\n", "Lungs clear."),
    # 3. the official table: misspellings and variants that are FINDINGS
    (" FINDING:  Lungs clear.\n", "Lungs clear."),
    (" FINDNINGS:  Lungs clear.\n", "Lungs clear."),
    (" CHEST, TWO VIEWS:  Lungs clear.\n IMPRESSION:  Normal.\n", "Lungs clear."),
    (" REFERENCE FINDINGS:  Lungs clear.\n", "Lungs clear."),
    # 4. a name that contains "findings" (and not "impression"), or else describes the exam
    (" FINDINGS ON PORTABLE FILM:  Lungs clear.\n", "Lungs clear."),
    (" PA AND LATERAL VIEWS OF THE CHEST:  Lungs clear.\n IMPRESSION:  Normal.\n", "Lungs clear."),
    (" PORTABLE AP UPRIGHT:  Lungs clear.\n", "Lungs clear."),
    (" COMPARISON WITH PRIOR CHEST:  Lungs clear.\n", ""),  # a main section (comparison) comes first
    # 5. FINDINGS AND IMPRESSION is an impression for the official parser
    (" FINDINGS AND IMPRESSION:  Lungs clear.\n", ""),
    (" FINDINGS/IMPRESSION:  Lungs clear.\n", ""),
    (" FINDINGS:  Heart normal.\n FINDINGS AND IMPRESSION:  Lungs clear.\n", "Heart normal."),
    # 6. empty FINDINGS sections are dropped and the last FINDINGS section wins
    (" FINDINGS:\n \n COMPARISON:  None.\n FINDINGS:  Lungs clear.\n", "Lungs clear."),
    (" FINDINGS:  Heart normal.\n IMPRESSION:  x.\n FINDINGS:  Lungs clear.\n", "Lungs clear."),
    (" FINDINGS:  Heart normal.\n IMPRESSION:  x.\n FINDINGS:\n \n", "Heart normal."),
])
def test_official_section_parser_rules(body, findings):
    assert extract_findings_section(HEAD + body) == findings


def test_section_boundaries(body=" FINDINGS:  Heart normal.\n WET READ:  x.\n IMPRESSION:  y.\n"):
    assert [name for name, _ in report_sections(HEAD + body)] == ["", "INDICATION", "FINDINGS", "WET READ",
                                                                  "IMPRESSION"]
    assert report_sections("no header at all") == [("", "no header at all")]
    assert is_findings_header("Findings") and not is_findings_header("IMPRESSION")


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
        "train": ["50414267", "50771383", "51000001", "51000002", "53189527", "53911762"],
        "validation": ["56699142"], "test": ["51000004", "58000001"]}
    # IMPRESSION only; FINDINGS AND IMPRESSION (an impression for the official parser)
    assert skipped.counts == {"empty findings": 2, "missing image": 1}
    assert skipped.examples == {"empty findings": ["57375967", "51000003"], "missing image": ["54205396"]}
    row = dsd["train"][dsd["train"]["id"].index("50414267")]
    # the lateral is listed first in the metadata; the frontal view must come first
    assert row["view_positions"] == ["PA", "LATERAL"]
    assert [Path(p).name for p in row["image_paths"]] == ["d1-pa.jpg", "d1-lat.jpg"]
    assert row["image_paths"][0] == str(raw_root.resolve() / "files/p10/p10000032/s50414267/d1-pa.jpg")
    assert row["study_date"] == "2180-05-06" and row["subject_id"] == "10000032"
    assert row["report"] == ("SYNTHETIC 0. There is a small left pleural effusion. "
                             "The cardiomediastinal silhouette is normal. No pneumothorax.")
    reports = {r["id"]: r["report"] for split in dsd.values() for r in split}
    assert reports["53911762"] == "SYNTHETIC 2. Mild cardiomegaly. No focal consolidation."  # CHEST, TWO VIEWS:
    assert reports["51000001"] == "SYNTHETIC 8. Heart size is normal. No pleural effusion."  # the last FINDINGS
    assert reports["51000002"] == "SYNTHETIC 9. There is a right lower lobe opacity."  # PA AND LATERAL VIEWS OF...
    assert reports["51000004"] == "SYNTHETIC 11. Lungs are clear. No pneumothorax."  # FINDING:


@pytest.mark.parametrize("max_views, expected", [
    (2, {"51000001": ["PA", "AP"], "51000002": ["PA", "LATERAL"], "51000004": ["PA", "AP"]}),
    (4, {"51000001": ["PA", "AP", "LATERAL", "LL"], "51000002": ["PA", "LATERAL", ""],
         "51000004": ["PA", "AP", "LATERAL", "LL"]}),
    (1, {"51000001": ["PA"], "51000002": ["PA"], "51000004": ["PA"]}),
])
def test_raw_layout_keeps_max_views_by_the_view_rule(raw_root, max_views, expected):
    views = ViewLog(max_views)
    dsd = load_mimic_cxr(mimic_root=raw_root, missing_images="skip", views=views)
    rows = {r["id"]: r for split in dsd.values() for r in split}
    for study, positions in expected.items():
        assert rows[study]["view_positions"] == positions
        names = {"PA": "pa", "AP": "ap", "LATERAL": "lat", "LL": "ll", "": "x"}
        assert [Path(p).stem.split("-")[1] for p in rows[study]["image_paths"]] == [names[v] for v in positions]
    summary = views.summary(rows)
    assert summary["images_per_study"] == {1: 5, 2: 1, 3: 1, 4: 2} and summary["max_views"] == max_views
    dropped = {2: (3, 5), 4: (0, 0), 1: (4, 9)}[max_views]  # (studies cut, views dropped), counted by hand
    assert (summary["studies_cut"], summary["views_dropped"]) == dropped


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
    assert ref["51000004"] == "51000002" and ref["51000001"] == "51000002"


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
    # an entry with several images: ordered and cut by the view rule, from the metadata's positions
    ann["train"].append({"id": "d9", "report": "Lungs clear.", "image_path": [
        f"p10/p10000935/s51000001/{d}.jpg" for d in ("d9-lat", "d9-ap", "d9-ll", "d9-pa")]})
    ann["test"] = [{"id": "d6-pa", "study_id": 58000001, "subject_id": 10000764, "report": "No effusion.",
                    "image_path": ["p10/p10000764/s58000001/d6-pa.jpg"], "split": "test"},
                   {"id": "d7-pa", "report": "Heart normal.", "image_path": ["p10/p10000898/s50771383/d7-pa.jpg"],
                    "split": "test"}]
    path = tmp_path / "annotation.json"
    path.write_text(json.dumps(ann))
    dsd = load_mimic_cxr(path, mimic_root=raw_root, image_root=raw_root / "files")
    row = dsd["train"][0]
    assert (row["id"], row["subject_id"], row["study_id"]) == ("d1-pa", "10000032", "50414267")
    multi = dsd["train"][dsd["train"]["id"].index("d9")]
    assert multi["view_positions"] == ["PA", "AP"] and [Path(p).name for p in multi["image_paths"]] == [
        "d9-pa.jpg", "d9-ap.jpg"]
    assert row["study_date"] == "2180-05-06" and row["view_positions"] == ["PA"]
    assert row["report"].startswith("SYNTHETIC PLACEHOLDER")
    # ids missing from the entry come from the image path
    test_row = dsd["test"][1]
    assert (test_row["subject_id"], test_row["study_id"]) == ("10000898", "50771383")
    # without the metadata: no dates, no views
    plain = load_mimic_cxr(path, image_root=raw_root / "files")
    assert plain["train"][0]["study_date"] == "" and plain["train"][0]["view_positions"] == [""]


def test_impression_section_by_the_official_rules():
    from s2d_align.data.text import extract_section

    text = " FINAL REPORT\n FINDINGS: Heart normal.\n IMPRESSION: First.\n ADDENDUM: x\n IMPRESSION:  \n CONCLUSION: Last.\n"
    assert extract_section(text, "impression") == "Last."  # CONCLUSION is an impression; the last non-empty wins
    assert extract_section(text, "findings") == "Heart normal."
    assert extract_section(" FINAL REPORT\n FINDINGS/IMPRESSION: Both.\n", "impression") == "Both."
    assert extract_section(" FINAL REPORT\n IMPRESSON: Typo.\n", "impression") == "Typo."  # the table's misspelling
    assert extract_section(" FINAL REPORT\n FINDINGS: Only.\n", "impression") == ""
    with pytest.raises(ValueError, match="unknown report section 'summary'"):
        extract_section(text, "summary")


def test_raw_layout_impression_section(raw_root):
    skipped = SkipLog()
    dsd = load_mimic_cxr(mimic_root=raw_root, missing_images="skip", skipped=skipped, section="impression")
    reports = {r["id"]: r["report"] for split in dsd.values() for r in split}
    assert skipped.counts == {"empty impression": 1, "missing image": 1}  # CHEST, TWO VIEWS only: no impression
    assert skipped.examples["empty impression"] == ["53911762"]
    assert reports["57375967"] == "SYNTHETIC 4. No acute cardiopulmonary process."  # skipped for findings
    assert reports["51000003"] == "SYNTHETIC 10. Mild cardiomegaly. No focal consolidation."  # FINDINGS AND IMPRESSION
    assert reports["50414267"] == "Small left effusion." and reports["51000002"] == "Pneumonia."


def test_r2gen_annotation_impression_reads_the_report_files(tmp_path, raw_root):
    ann = {"train": [{"id": "d1-pa", "report": "Findings text.", "image_path": ["p10/p10000032/s50414267/d1-pa.jpg"]},
                     {"id": "d3", "report": "Findings only.", "image_path": ["p10/p10000032/s53911762/d3-pa.jpg"]}],
           "val": [], "test": []}
    path = tmp_path / "annotation.json"
    path.write_text(json.dumps(ann))
    from PIL import Image

    (raw_root / "files/p10/p10000032/s53911762").mkdir(exist_ok=True)
    Image.new("L", (8, 8)).save(raw_root / "files/p10/p10000032/s53911762/d3-pa.jpg")
    skipped = SkipLog()
    dsd = load_mimic_cxr(path, image_root=raw_root / "files", reports_root=raw_root, section="impression",
                         skipped=skipped)
    assert dsd["train"]["report"] == ["Small left effusion."] and skipped.counts == {"empty impression": 1}
    assert load_mimic_cxr(path, image_root=raw_root / "files")["train"]["report"] == ["Findings text.", "Findings only."]
    with pytest.raises(ValueError, match="holds FINDINGS only; pass --reports-root"):
        load_mimic_cxr(path, image_root=raw_root / "files", section="impression")
