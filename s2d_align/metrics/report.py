"""Writers: ``metrics.json``, ``metrics.md`` (laid out like S2D-Align's Table 1) and a per-observation
CE F1 bar chart. Each names the CE convention, the labeler and the kind of references."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..labeler import OBSERVATIONS

PLOT_NAME = "ce_per_observation_f1.png"


def provenance_line(result: dict[str, Any]) -> str:
    s = result["settings"]
    return (f"CE convention: {s['ce_convention']} | labeler: {s['labeler']} | references: "
            f"{s['references']} (never truncated) | text cleaning: {s['text_cleaning']} | "
            f"reports: {result['n_reports']}")


def write_metrics_json(result: dict[str, Any], path: str | Path) -> None:
    Path(path).write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def metrics_markdown(result: dict[str, Any]) -> str:
    """Table 1 layout: B@1 B@2 B@3 B@4 MTR RG-L | CE P R F1, then the extras and provenance."""
    nlg, ce = result["nlg"], result["ce"]
    cells = [nlg[f"BLEU_{n}"] for n in range(1, 5)] + [nlg["METEOR"], nlg["ROUGE_L"]]
    cells += [ce["precision"], ce["recall"], ce["f1"]]
    lines = ["# Evaluation", "", provenance_line(result), "",
             "| B@1 | B@2 | B@3 | B@4 | MTR | RG-L | P | R | F1 |",
             "|---|---|---|---|---|---|---|---|---|",
             "| " + " | ".join(_fmt(c) for c in cells) + " |", "",
             f"CIDEr-D: {_fmt(nlg['CIDEr'])}. METEOR: {nlg['meteor_status']}."]
    if "macro" in ce:
        lines.append(f"CE macro (14 obs.): P {_fmt(ce['macro']['precision'])} R {_fmt(ce['macro']['recall'])} "
                     f"F1 {_fmt(ce['macro']['f1'])}.")
    if "five" in ce:
        five = ce["five"]
        lines.append(f"CE 5 obs. (Cardiomegaly, Edema, Consolidation, Atelectasis, Pleural Effusion): micro F1 "
                     f"{_fmt(five['micro']['f1'])}, macro F1 {_fmt(five['macro']['f1'])}.")
    rg = result.get("radgraph", {})
    lines.append(rg["skipped"] + "." if "skipped" in rg else
                 f"RadGraph F1: simple {_fmt(rg['simple'])}, partial {_fmt(rg['partial'])}, complete {_fmt(rg['complete'])}.")
    if result.get("empty_predictions"):
        lines.append(f"Empty predictions (scored as empty text): {len(result['empty_predictions'])}.")
    lines += ["", "| observation | P | R | F1 | support |", "|---|---|---|---|---|"]
    for obs in OBSERVATIONS:
        row = ce["per_observation"][obs]
        lines.append(f"| {obs} | {_fmt(row['precision'])} | {_fmt(row['recall'])} | {_fmt(row['f1'])} | {row['support']} |")
    return "\n".join(lines) + "\n"


def write_metrics_md(result: dict[str, Any], path: str | Path) -> None:
    Path(path).write_text(metrics_markdown(result), encoding="utf-8")


def plot_per_observation_f1(result: dict[str, Any], path: str | Path) -> None:
    """Horizontal bars of CE F1 per observation (matplotlib, Agg backend: no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_obs = result["ce"]["per_observation"]
    f1 = [per_obs[o]["f1"] for o in OBSERVATIONS]
    fig, ax = plt.subplots(figsize=(7, 5), dpi=100)
    ax.barh(list(OBSERVATIONS)[::-1], f1[::-1], color="#4c72b0")
    ax.set_xlim(0, 1)
    ax.set_xlabel("F1")
    s = result["settings"]
    ax.set_title(f"CE F1 per observation\nconvention={s['ce_convention']}, labeler={s['labeler']}, "
                 f"references={s['references']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_outputs(result: dict[str, Any], out_dir: str | Path) -> dict[str, str]:
    """Write metrics.json, metrics.md and the plot into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "metrics.json", "md": out / "metrics.md", "plot": out / PLOT_NAME}
    write_metrics_json(result, paths["json"])
    write_metrics_md(result, paths["md"])
    plot_per_observation_f1(result, paths["plot"])
    return {k: str(v) for k, v in paths.items()}
