"""Benchmark: rule labeler throughput on all 3,955 Open-i IU X-Ray reports (FINDINGS + IMPRESSION), one core.

The process is pinned to one CPU (``os.sched_setaffinity``). "cold" clears the labeler's sentence cache before
each pass (a pass still meets repeated template sentences, as any real corpus does: that is counted); "warm"
labels the same reports again with the cache full; "uncached" clears it before every report, so no sentence
is ever reused across reports (the worst case: a corpus without repeated sentences). Wall time and process CPU time are both recorded, with
the machine's load average, because a shared machine slows the wall clock.
    python -m bench.labeler_speed --out bench/results/labeler_speed.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tarfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from s2d_align.labeler import label_report, rules

REPORTS = Path(__file__).resolve().parents[1] / "s2d_align" / "resources" / "iu_xray" / "NLMCXR_reports.tgz"


def iu_reports() -> list[str]:
    """FINDINGS and IMPRESSION of every Open-i report, joined (a report with neither is kept as "")."""
    out = []
    with tarfile.open(REPORTS) as tar:
        for member in tar:
            if member.name.endswith(".xml"):
                sections = {n.get("Label"): "".join(n.itertext()).strip()
                            for n in ET.fromstring(tar.extractfile(member).read()).iter("AbstractText")}
                out.append(" ".join(s for s in (sections.get("FINDINGS"), sections.get("IMPRESSION")) if s))
    return out


def _pass(reports: list[str], cold: bool, uncached: bool = False) -> tuple[float, float]:
    clear = rules._cached_sentence_mentions.cache_clear
    if cold:
        clear()
    wall, cpu = time.perf_counter(), time.process_time()
    for report in reports:
        if uncached:
            clear()
        label_report(report)
    return time.perf_counter() - wall, time.process_time() - cpu


def run(repeats: int) -> dict:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    reports = iu_reports()
    load_before = [round(x, 2) for x in os.getloadavg()]
    label_report("Warm-up: compile the patterns.")
    uncached = [_pass(reports, cold=True, uncached=True) for _ in range(repeats)]
    cold = [_pass(reports, cold=True) for _ in range(repeats)]
    warm = [_pass(reports, cold=False) for _ in range(repeats)]

    def rates(passes):
        return {"best_wall_s": round(min(w for w, _ in passes), 3), "best_cpu_s": round(min(c for _, c in passes), 3),
                "reports_per_s_wall": round(len(reports) / min(w for w, _ in passes), 1),
                "reports_per_s_cpu": round(len(reports) / min(c for _, c in passes), 1)}

    return {"benchmark": "rule labeler, all Open-i IU X-Ray reports (FINDINGS + IMPRESSION)",
            "reports": len(reports), "sentences": sum(len(rules.split_sentences(r)) for r in reports),
            "unique_sentences": len({s for r in reports for s in rules.split_sentences(r)}),
            "cores": 1, "repeats": repeats, "uncached": rates(uncached), "cold": rates(cold), "warm": rates(warm),
            "meets_1000_per_s": {kind: {"cpu": len(reports) / min(c for _, c in passes) >= 1000,
                                        "wall": len(reports) / min(w for w, _ in passes) >= 1000}
                                 for kind, passes in (("uncached", uncached), ("cold", cold))},
            "load_average_1_5_15_before": load_before,
            "load_average_1_5_15_after": [round(x, 2) for x in os.getloadavg()], "cpu_count": os.cpu_count(),
            "python": platform.python_version(), "machine": platform.machine()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/labeler_speed.json"))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    result = run(args.repeats)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
