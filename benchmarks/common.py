"""What every benchmark records beside its numbers: command, versions, machine, date."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from diffagent.bench import machine_info


def write_results(path: str | Path, results: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    command = " ".join([os.path.basename(sys.executable)] + sys.argv)
    path.write_text(json.dumps({**machine_info(command), "results": results}, indent=2) + "\n")
    print(f"wrote {path}")


def markdown_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(f"{row[c]:.4g}" if isinstance(row[c], float) else str(row[c]) for c in columns) + " |")
    return "\n".join(lines)
