"""A training run's record, `out_dir/run.json`: the settings a resumed run must share with the run that
wrote its checkpoints (`Trainer.run_settings`)."""
from __future__ import annotations

import json
from pathlib import Path


def first_difference(old, new, prefix: str = ""):
    """The first (sorted) key where two records differ, dotted into nested mappings, with both values
    (a missing key reads as None); None when they agree."""
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found = first_difference(a, b, f"{prefix}{key}.")
            if found is not None:
                return found
        elif a != b:
            return f"{prefix}{key}", a, b
    return None


def check_record(out_dir, settings: dict, resuming: bool, write: bool) -> None:
    """Refuse to resume (`resuming`: `out_dir` holds checkpoints) a run whose run.json records other
    `settings`, naming the first setting that differs and both values; a fresh run writes run.json
    when `write` (the main process)."""
    path = Path(out_dir) / "run.json"
    if resuming and path.is_file():
        difference = first_difference(json.loads(path.read_text()), settings)
        if difference is not None:
            key, old, new = difference
            raise ValueError(f"{out_dir} holds a run made with {key}={old}; this run has {key}={new}: "
                             "use another out_dir or the same settings")
    elif write:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(settings, indent=2) + "\n")
