"""What the observability tests share: the metrics table of docs/observability.md
(the documented names, types and labels) and the `promtool` binary."""

import os
import re
import shutil
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OBSERVABILITY_DOC = ROOT / "docs" / "observability.md"


def documented_metrics() -> dict[str, dict]:
    """The metrics table of docs/observability.md (a table whose header row starts
    `| metric |`): name -> {"type", "labels"}; a label cell's parenthesised notes are
    not labels."""
    assert OBSERVABILITY_DOC.is_file(), f"{OBSERVABILITY_DOC} is missing"
    out = {}
    in_table = False
    for line in OBSERVABILITY_DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else None
        if cells is None:
            in_table = False
            continue
        if cells[0].lower() == "metric":
            in_table = True
            continue
        if not in_table or set(cells[0]) <= {"-", ":", " "}:
            continue
        name = re.fullmatch(r"`([a-zA-Z_:][a-zA-Z0-9_:]*)`", cells[0])
        assert name, f"the metrics table's first column holds a name in backticks: {line!r}"
        label_cell = re.sub(r"\([^)]*\)", "", cells[2]) if len(cells) > 2 else ""
        out[name.group(1)] = {
            "type": cells[1] if len(cells) > 1 else "",
            "labels": set(re.findall(r"`([^`]+)`", label_cell)),
        }
    assert out, f"no metrics table (a header row starting `| metric |`) in {OBSERVABILITY_DOC}"
    return out


def promtool() -> str:
    """The promtool binary (Debian's `prometheus` package); without it the test is
    skipped with a warning, or fails when QUIVER_REQUIRE_PROMTOOL=1."""
    path = shutil.which("promtool")
    if path:
        return path
    if os.environ.get("QUIVER_REQUIRE_PROMTOOL") == "1":
        pytest.fail("QUIVER_REQUIRE_PROMTOOL=1 but promtool is not installed")
    warnings.warn("promtool is not installed (apt-get install prometheus): skipping")
    pytest.skip("no promtool")
