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
    cleaning = s["text_cleaning"]
    if s.get("text_cleaning_source") not in (None, "given"):
        cleaning += f" ({s['text_cleaning_source']})"
    return (f"CE convention: {s['ce_convention']} | labeler: {s['labeler']} | references: "
            f"{s['references']} (never truncated) | text cleaning: {cleaning} | "
            f"reports: {result['n_reports']}")


def ce_table_note(labeler: str) -> str:
    """The header line every table with a CE column carries: published CE figures (S2D-Align's Table
    1 among them) are CheXbert-labelled, and a rules-labelled column is not comparable with them."""
    if labeler == "chexbert":
        return "CE labels: CheXbert."
    return f"CE labels: {labeler} labeler: not comparable with CheXbert-based tables."


def write_metrics_json(result: dict[str, Any], path: str | Path) -> None:
    Path(path).write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _cell(value: Any, interval: list[float] | None) -> str:
    """``0.403 [0.388, 0.411]``: the figure and its bootstrap 95% interval when there is one."""
    if value is None or interval is None:
        return _fmt(value)
    return f"{value:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]"


def metrics_markdown(result: dict[str, Any]) -> str:
    """Table 1 layout: B@1 B@2 B@3 B@4 MTR RG-L | CE P R F1, then the extras and provenance; each
    figure with its bootstrap 95% interval when ``result["intervals"]`` has one."""
    nlg, ce = result["nlg"], result["ce"]
    iv = result.get("intervals", {})
    nlg_iv, ce_iv = iv.get("nlg", {}), iv.get("ce", {})

    def ce_cell(tree, ivtree, key):
        return _cell(tree[key], ivtree.get(key) if ivtree else None)

    keys = [f"BLEU_{n}" for n in range(1, 5)] + ["METEOR", "ROUGE_L"]
    cells = [_cell(nlg[k], nlg_iv.get(k)) for k in keys] + [ce_cell(ce, ce_iv, k) for k in ("precision", "recall", "f1")]
    note = ce_table_note(result["settings"]["labeler"])
    lines = ["# Evaluation", "", provenance_line(result), ""]
    if iv:
        st = iv["settings"]
        lines += [f"Brackets: {st['interval']} interval, {st['resamples']} resamples of studies, seed {st['seed']}.", ""]
    lines += [f"NLG and CE ({note})", "",
              "| B@1 | B@2 | B@3 | B@4 | MTR | RG-L | P | R | F1 |",
              "|---|---|---|---|---|---|---|---|---|",
              "| " + " | ".join(cells) + " |", "",
              f"CIDEr-D: {_cell(nlg['CIDEr'], nlg_iv.get('CIDEr'))}. METEOR: {nlg['meteor_status']}."]
    if "macro" in ce:
        m_iv = ce_iv.get("macro")
        lines.append(f"CE macro (14 obs.): P {ce_cell(ce['macro'], m_iv, 'precision')} R {ce_cell(ce['macro'], m_iv, 'recall')} "
                     f"F1 {ce_cell(ce['macro'], m_iv, 'f1')}.")
    if "five" in ce:
        five, f_iv = ce["five"], ce_iv.get("five", {})
        lines.append(f"CE 5 obs. (Cardiomegaly, Edema, Consolidation, Atelectasis, Pleural Effusion): micro F1 "
                     f"{ce_cell(five['micro'], f_iv.get('micro'), 'f1')}, macro F1 {ce_cell(five['macro'], f_iv.get('macro'), 'f1')}.")
    rg = result.get("radgraph", {})
    lines.append(rg["skipped"] + "." if "skipped" in rg else
                 f"RadGraph F1: simple {_fmt(rg['simple'])}, partial {_fmt(rg['partial'])}, complete {_fmt(rg['complete'])}.")
    if result.get("empty_predictions"):
        lines.append(f"Empty predictions (scored as empty text): {len(result['empty_predictions'])}.")
    lines += ["", f"Per observation ({note})", "",
              "| observation | P | R | F1 | support |", "|---|---|---|---|---|"]
    for obs in OBSERVATIONS:
        row, r_iv = ce["per_observation"][obs], ce_iv.get("per_observation", {}).get(obs)
        lines.append(f"| {obs} | {ce_cell(row, r_iv, 'precision')} | {ce_cell(row, r_iv, 'recall')} | "
                     f"{ce_cell(row, r_iv, 'f1')} | {row['support']} |")
    return "\n".join(lines) + "\n"


def comparison_markdown(result: dict[str, Any]) -> str:
    """``s2d eval --compare``: A, B, B - A with its paired-bootstrap interval, and the p-value."""
    st = result["comparison"]["settings"]
    note = ce_table_note(result["settings"]["labeler"])
    lines = ["# Paired comparison", "", f"A: {result['systems']['A']}", f"B: {result['systems']['B']}",
             f"References: {result['systems']['references']} ({result['n_reports']} studies); "
             f"text cleaning: {result['settings']['text_cleaning']}; CE convention: {result['settings']['ce_convention']}.",
             f"Test: {st['test']}, {st['trials']} trials, seed {st['seed']}; interval: {st['interval']}.", "",
             f"Metrics ({note})", "",
             "| metric | A | B | B - A [95% CI] | p |", "|---|---|---|---|---|"]
    for key, row in result["comparison"]["metrics"].items():
        lo, hi = row["difference_ci"]
        lines.append(f"| {key} | {row['A']:.3f} | {row['B']:.3f} | {row['difference']:+.3f} [{lo:+.3f}, {hi:+.3f}] | "
                     f"{row['p_value']:.4f} |")
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
