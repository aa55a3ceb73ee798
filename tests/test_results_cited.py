"""Every results file a README cites exists: benchmarks/results/ keeps what the READMEs cite (git keeps
the rest), so a citation that no longer resolves is a broken claim."""
from __future__ import annotations

import itertools
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CITED = re.compile(r"benchmarks/results/([A-Za-z0-9_./{},*-]+)")


def expand(pattern: str) -> list[str]:
    """``a-{0,5}.json`` -> ``a-0.json``, ``a-5.json`` (the brace lists READMEs use)."""
    parts = re.split(r"\{([^}]*)\}", pattern)
    choices = [[p] if i % 2 == 0 else p.split(",") for i, p in enumerate(parts)]
    return ["".join(c) for c in itertools.product(*choices)]


def cited_paths() -> list[tuple[Path, str]]:
    out = []
    for md in [REPO / "README.md", *sorted((REPO / "modalities").glob("*/README.md")), *sorted((REPO / "recipes").glob("*.yaml"))]:
        for m in CITED.finditer(md.read_text()):
            target = m.group(1).rstrip(".,")
            if not target or target.endswith("_") or target.endswith("-"):  # a prefix in prose: `core_throughput_<device>.json`
                continue
            out += [(md, t) for t in expand(target)]
    return out


def test_every_cited_results_file_exists():
    cited = cited_paths()
    assert len(cited) > 20  # the READMEs cite their numbers; a regex that finds nothing would pass vacuously
    missing = [f"{md.relative_to(REPO)}: benchmarks/results/{t}" for md, t in cited
               if not list((REPO / "benchmarks" / "results").glob(t))]
    assert not missing, "cited results files that do not exist:\n" + "\n".join(missing)
