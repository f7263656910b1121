"""S2D-Align in the browser: upload a chest X-ray (frontal, optionally a lateral), read the generated findings and
see where the image adapter looked (heat maps of its memory queries' attention over the patches).

    pip install -e '.[app]'
    python app.py [--model out/demo/final] [--port 7860] [--host 127.0.0.1]

The model folder defaults to the environment variable `S2D_MODEL`, else `out/demo/final` (written by `make demo`);
without one the page says how to get one. Reports are generated exactly as `s2d generate` does (same function,
greedy, same length limit), so the page and the command give the same text for the same image.

Hugging Face Space: put this file, a `requirements.txt` holding this package with its `app` extra (e.g.
`s2d-align[app] @ git+https://github.com/<you>/s2d-align`) and the model folder (or set `S2D_MODEL` to it) in the
Space; its README.md carries the Space metadata:

    ---
    title: S2D-Align radiology report generation
    emoji: 🩻
    sdk: gradio
    sdk_version: 6.31.0
    app_file: app.py
    license: apache-2.0
    ---

Research code: not a medical device; the demo model is trained on synthetic phantom radiographs only.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

DEFAULT_MODEL = "out/demo/final"
IMAGE_TYPES = [".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"]
HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I", "F")
NO_MODEL = ("**No model loaded.** {reason} Run `make demo` (writes `out/demo/final`), or start the app with "
            "`python app.py --model DIR` / `S2D_MODEL=DIR` pointing at a saved S2D-Align folder.")


class ReportApp:
    """The model, its processor and the page's one action: views in, report + heat map + status message out."""

    def __init__(self, model_dir: str | None):
        self.model_dir, self.model, self.processor, self.problem = model_dir, None, None, None
        if not model_dir or not (Path(model_dir) / "config.json").is_file():
            self.problem = NO_MODEL.format(reason=f"`{model_dir}` is not a model folder (no config.json)."
                                           if model_dir else "No model folder given.")
            return
        from s2d_align.generation import load_model

        self.model, self.processor = load_model(model_dir)

    def run(self, frontal, lateral=None):
        """Returns (report, heat map image or None, status markdown). Never raises: a bad upload is a message."""
        if self.model is None:
            return "", None, self.problem
        views = [_path(v) for v in (frontal, lateral) if v is not None]
        if not views:
            return "", None, "Upload a frontal chest X-ray first (PNG or JPEG; 16-bit PNG is fine)."
        notes = [note for note in map(_note, views) if note]
        try:
            from s2d_align.attention import side_by_side, study_attention_images
            from s2d_align.generation import generate_rows

            row = generate_rows(self.model, self.processor, [views], progress=False)[0]
            if "error" in row:  # unreadable / not an image / too small: load_radiograph's message names the file
                return "", None, f"**Could not use this upload:** {_short(row['error'], views)}"
            maps = study_attention_images(self.model, self.processor, [views])[0]
            heat = side_by_side(maps["views"])
        except Exception as err:  # noqa: BLE001  (the page shows one line, never a stack trace)
            return "", None, f"**Generation failed:** {type(err).__name__}: {_short(str(err), views)}"
        status = " ".join(["Report generated from the image(s) alone.", *notes])
        return row["report"], heat, status


def _path(upload) -> str:
    """gr.File gives a path string (or an object with `.name` in older Gradio)."""
    return upload if isinstance(upload, str) else getattr(upload, "name", str(upload))


def _short(message: str, views: list[str]) -> str:
    """Error text with the server's temporary upload folders cut to file names."""
    for view in views:
        message = message.replace(view, Path(view).name)
    return message


def _note(path: str) -> str | None:
    from PIL import Image

    try:
        with Image.open(path) as image:
            if image.mode in HIGH_BIT_MODES:
                return (f"Note: {Path(path).name} is a {image.mode} (high bit depth) image; it was windowed to "
                        "8 bits from its own darkest to brightest pixel.")
    except Exception:  # noqa: BLE001  (unreadable files are reported by the generation step)
        return None
    return None


def phantom_examples(model_dir: str | None, count: int = 4) -> list[str]:
    """Frontal images of phantom test studies with findings, from the demo's data beside the model folder
    (`out/demo/data`); none when that is missing."""
    if not model_dir:
        return []
    data = Path(os.path.abspath(model_dir)).parent / "data"  # not resolve(): the demo's final/ may be a symlink
    if not (data / "dataset_dict.json").is_file():
        return []
    from datasets import load_from_disk

    test = load_from_disk(str(data))["test"]
    picked = []
    for row in test:  # a few studies that show something: the opacity first, then other findings
        findings = json.loads(row["findings"]) if "findings" in row else {}
        if findings.get("opacity") or (len(picked) >= 2 and any(findings.values())):
            path = row["image_paths"][0]
            if Path(path).is_file():
                picked.append(path)
        if len(picked) == count:
            break
    return picked


def build_demo(app: ReportApp):
    import gradio as gr

    with gr.Blocks(title="S2D-Align") as demo:
        gr.Markdown("# S2D-Align: chest X-ray to findings\nUpload a frontal view (and optionally a lateral one). "
                    "The report is written from the image(s) alone; the heat map shows where the image adapter's "
                    "memory queries looked (mean over heads and queries).")
        if app.problem:
            gr.Markdown(app.problem, elem_id="model-status")
        with gr.Row():
            with gr.Column():
                frontal = gr.File(label="Frontal view", file_types=IMAGE_TYPES, elem_id="frontal")
                lateral = gr.File(label="Lateral view (optional)", file_types=IMAGE_TYPES, elem_id="lateral")
                button = gr.Button("Generate report", variant="primary", elem_id="generate",
                                   interactive=app.model is not None)
            with gr.Column():
                report = gr.Textbox(label="Findings", lines=8, elem_id="report")
                heat = gr.Image(label="Where the model looked", type="pil", format="png", height=360,
                                elem_id="heatmap")  # png: lossless, the same pixels as `s2d generate --attention-maps`
                status = gr.Markdown(elem_id="status")
        examples = phantom_examples(app.model_dir)
        if examples:
            gr.Examples(examples=[[path] for path in examples], inputs=[frontal],
                        label="Phantom test studies (synthetic radiographs)")
        button.click(app.run, inputs=[frontal, lateral], outputs=[report, heat, status])
    return demo


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="S2D-Align web app (Gradio)")
    parser.add_argument("--model", default=os.environ.get("S2D_MODEL", DEFAULT_MODEL),
                        help=f"a saved S2D-Align folder (default: $S2D_MODEL, else {DEFAULT_MODEL})")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    args = parser.parse_args(argv)
    build_demo(ReportApp(args.model)).launch(server_name=args.host, server_port=args.port)


if __name__ == "__main__":
    main()
