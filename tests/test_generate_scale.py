"""`s2d generate` at dataset scale: JSONL studies, bad images as error rows, beam search, `accelerate launch`."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from s2d_align.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def studies(tmp_path_factory, radiographs):
    """A studies JSONL (relative paths) with three readable studies and three bad ones between them."""
    folder = tmp_path_factory.mktemp("studies")
    for i, source in enumerate(radiographs):
        Image.open(source).resize((96, 80)).save(folder / f"r{i}.png")
    (folder / "notes.png").write_text("this is not an image")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / "tiny.png")
    rows = [{"id": "a", "images": ["r0.png"]},
            {"id": "bad-text", "images": ["notes.png"]},
            {"id": "b", "images": ["r1.png", "r0.png"], "view_positions": ["LATERAL", "PA"]},
            {"id": "bad-tiny", "image": "tiny.png"},
            {"id": "bad-missing", "images": ["gone.png"]},
            {"id": "c", "images": [str(folder / "r1.png")]}]  # an absolute path is taken as it is
    path = folder / "studies.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _rows(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_bad_images_become_error_rows_and_cost_no_other_report(saved, tiny, studies, tmp_path, capsys):
    from s2d_align.generation import generate_reports

    out = tmp_path / "preds.jsonl"
    assert main(["generate", "--model", str(saved), "--studies", str(studies), "--out", str(out),
                 "--batch-size", "8", "--max-new-tokens", "6", "--no-progress"]) == 0
    rows = _rows(out)
    assert [r["id"] for r in rows] == ["a", "bad-text", "b", "bad-tiny", "bad-missing", "c"]
    errors = {r["id"]: r["error"] for r in rows if "error" in r}
    assert set(errors) == {"bad-text", "bad-tiny", "bad-missing"}
    assert "cannot read image" in errors["bad-text"] and "notes.png" in errors["bad-text"]
    assert "8x8 px" in errors["bad-tiny"] and "image not found" in errors["bad-missing"]
    assert all("report" not in r for r in rows if "error" in r)  # `s2d eval` refuses such a file by line
    assert "3 of 6 studies could not be read" in capsys.readouterr().err
    folder = studies.parent  # the reference: each good study generated on its own, PA first for "b"
    model, processor = tiny
    alone = [generate_reports(model, processor, [views], max_new_tokens=6, progress=False)[0]
             for views in ([folder / "r0.png"], [folder / "r0.png", folder / "r1.png"], [folder / "r1.png"])]
    assert [r["report"] for r in rows if "report" in r] == alone


def test_studies_file_errors_name_file_and_line(saved, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "images": ["x.png"]}\n{"id": "b"}\n')
    assert main(["generate", "--model", str(saved), "--studies", str(bad)]) == 2
    assert f"{bad}:2: expected an object with" in capsys.readouterr().err
    bad.write_text('{"id": "a", "images": ["x.png"]}\n{"id": "a", "images": ["y.png"]}\n')
    assert main(["generate", "--model", str(saved), "--studies", str(bad)]) == 2
    assert "duplicate id 'a' (first on line 1)" in capsys.readouterr().err
    only_bad = tmp_path / "only_bad.jsonl"
    only_bad.write_text('{"id": "a", "images": ["gone.png"]}\n')
    assert main(["generate", "--model", str(saved), "--studies", str(only_bad), "--out",
                 str(tmp_path / "p.jsonl")]) == 2  # nothing generated at all: the command fails


def test_num_beams_is_beam_search(saved, tiny, radiographs, tmp_path):
    out = tmp_path / "beams.jsonl"
    assert main(["generate", "--model", str(saved), "--images", radiographs[0], "--num-beams", "3",
                 "--max-new-tokens", "7", "--out", str(out), "--no-progress"]) == 0
    model, processor = tiny  # the reference: transformers' beam search called directly
    inputs = processor(images=[radiographs[0]])
    with torch.inference_mode():
        direct = model.generate(**inputs, max_new_tokens=7, num_beams=3, do_sample=False)
    expected = processor.batch_decode(direct, prompt_length=inputs["input_ids"].shape[1])
    assert [r["report"] for r in _rows(out)] == expected


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_under_accelerate_equal_one(saved, studies, tmp_path):
    """`accelerate launch` on 2 CPU processes: each generates its share, one file in input order, same rows."""
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    common = ["generate", "--model", str(saved), "--studies", str(studies), "--max-new-tokens", "6",
              "--batch-size", "2", "--no-progress", "--attention-maps"]
    assert main(common + [str(tmp_path / "maps1"), "--out", str(one)]) == 0
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(_free_port()), "-m", "s2d_align.cli"]
    result = subprocess.run(launch + common + [str(tmp_path / "maps2"), "--out", str(two)], env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows_one, rows_two = _rows(one), _rows(two)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "attention_map"} for r in rows]  # noqa: E731
    assert strip(rows_two) == strip(rows_one)
    assert [r["id"] for r in rows_two] == ["a", "bad-text", "b", "bad-tiny", "bad-missing", "c"]
    maps_two = sorted(p.name for p in (tmp_path / "maps2").iterdir())
    assert maps_two == ["a.png", "b.png", "c.png"]  # written by both processes, one per readable study
    for name in maps_two:
        assert np.array_equal(np.asarray(Image.open(tmp_path / "maps1" / name)),
                              np.asarray(Image.open(tmp_path / "maps2" / name)))
