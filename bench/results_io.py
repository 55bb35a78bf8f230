"""Writing a benchmark's results: bench/results/<script>-<device>-<date>[-smoke].md|json (bench/README.md)."""
from __future__ import annotations

import json
from datetime import date
from pathlib import Path


def write_results(out: Path, script: str, device: str, smoke: bool, markdown: str, args, rows: list[dict]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{script}-{device.replace(' ', '_')}-{date.today()}{'-smoke' if smoke else ''}"
    (out / f"{stem}.md").write_text(markdown)
    (out / f"{stem}.json").write_text(json.dumps({"device": device, "args": {k: str(v) for k, v in vars(args).items()},
                                                 "rows": rows}, indent=2) + "\n")
    return out / f"{stem}.md"
