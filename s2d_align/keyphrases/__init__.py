"""Stage-3 key phrases: short grounded phrases from a report ("small left pleural effusion").

Backends: `rules` (default, offline, built on the project's rule labeler) and `radgraph` (needs the
`radgraph` package and its model weights already on disk; never downloads). The optional LLM rewrite
of the paper's appendix A lives in `llm_rewrite`.
"""

from __future__ import annotations

BACKENDS = ("rules", "radgraph")


def extract_key_phrases(report: str, backend: str = "rules") -> list[str]:
    """Key phrases of one report with the chosen backend."""
    if backend == "rules":
        from .rules import extract_rule_phrases

        return extract_rule_phrases(report)
    if backend == "radgraph":
        from .radgraph_backend import extract_radgraph_phrases

        return extract_radgraph_phrases(report)
    raise ValueError(f"unknown key-phrase backend {backend!r}; choose one of {', '.join(BACKENDS)}")


__all__ = ["BACKENDS", "extract_key_phrases"]
