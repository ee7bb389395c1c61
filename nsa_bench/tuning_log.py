"""tuning.json in a run folder: the config every autotuned kernel ran with, rewritten as tasks finish.

Each autotuner's key holds the size buckets of the launch (SEQ_BUCKET = bit length of T, ROWS_BUCKET =
bit length of B x heads) besides its shape arguments and tensor dtypes, so a row maps to its configs
by its point; `first_tuned_in` names the task after which a choice first appeared (the task that tuned
it, or read it from Triton's disk cache). The file is replaced atomically, so a run cut off at any
moment leaves a complete one.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

TUNING_NAME = "tuning.json"
STAGES_NOTE = ("a point's stage rows launch the autotuners its total row launches (nsa_kernels.nsa forward_stages / "
               "backward_stages: the inference forward's gated, accumulating launches; the backward's in-place dq "
               "chain), so every row of a point ran the configs listed here for its key")


class TuningLog:
    """Writes out_dir/tuning.json from `nsa_kernels.tuning.chosen_configs()` after each task."""

    def __init__(self, out_dir: Path) -> None:
        self.path = Path(out_dir) / TUNING_NAME
        self._first: dict[tuple[str, str], str] = {}

    def update(self, task: str, records: list[dict] | None = None) -> int:
        """Rewrite the file with every choice made so far in this process (or, given `records`, the ones a
        worker process reported: `Choice.as_dict()`s); returns how many there are."""
        if records is None:
            from nsa_kernels import tuning

            records = [choice.as_dict() for choice in tuning.chosen_configs()]
        entries = []
        for record in records:
            key = (str(record["kernel"]), json.dumps(record["key"], sort_keys=True, default=str))
            entries.append({**record, "first_tuned_in": self._first.setdefault(key, task)})
        payload = {"about": "config each autotuned kernel ran with, per autotune key (size buckets, shape "
                            "arguments, tensor dtypes); nsa_kernels.tuning.chosen_configs()",
                   "stages": STAGES_NOTE, "configs": entries}
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(payload, indent=1, sort_keys=True, default=str) + "\n")
        os.replace(tmp, self.path)
        return len(entries)
