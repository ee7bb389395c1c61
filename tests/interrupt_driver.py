"""A test-only process that runs `nsa-bench` commands slowly enough to be interrupted in the middle of a point.

Predicted sweeps on the CPU finish a point in about a millisecond, so a signal would almost always land
between points. This driver slows the two things a point does — computing its rows and writing them —
from the outside (monkeypatching, nothing in nsa_bench knows): `execute.rows_for` sleeps a little, and
`results.append_text`, the one function through which results.csv and progress.jsonl grow, writes its
text in small flushed chunks with a pause between them, so a signal can cut a row, a point or a progress
line anywhere. Importing torch takes seconds, so one driver serves many commands:

    stdin:  one JSON list of arguments per line (`["sweep", "--out", ...]`)
    stdout: `START` when the command begins, then `END {"code": ..., "stderr": ...}` when it ends

Between commands SIGINT and SIGTERM are ignored (a signal that arrives late must not kill the driver);
while a command runs, `nsa_bench.cli.main` installs its own handlers, as it does for a user.
`--once ARGS...` runs one command and exits (for SIGKILL, which no process survives).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import random
import signal
import sys
import time
from pathlib import Path

CHUNK = 48  # characters written per chunk
PAUSE_S = 0.0008  # between chunks
ROW_PAUSE_S = 0.002  # computing one task's rows
LANDED: dict = {"mid_write": False, "where": ""}  # where the last interruption landed (reported with END)


def install_slow_path() -> None:
    from nsa_bench import execute, results

    original_rows_for = execute.rows_for
    rng = random.Random(os.getpid())

    def slow_rows_for(*args, **kwargs):
        time.sleep(ROW_PAUSE_S * rng.random())
        return original_rows_for(*args, **kwargs)

    def slow_append_text(path: Path, text: str) -> None:
        try:
            with path.open("a", newline="", encoding="utf-8") as handle:
                for start in range(0, len(text), CHUNK):
                    handle.write(text[start:start + CHUNK])
                    handle.flush()
                    time.sleep(PAUSE_S)
                os.fsync(handle.fileno())
        except KeyboardInterrupt:
            LANDED["mid_write"] = True  # the signal cut a write of rows or of a progress line
            raise

    execute.rows_for = slow_rows_for
    results.append_text = slow_append_text

    from nsa_bench import interrupts

    original_raise = interrupts._raise

    def noting_raise(signum, frame):
        LANDED["where"] = f"{Path(frame.f_code.co_filename).name}:{frame.f_code.co_name}"
        original_raise(signum, frame)

    interrupts._raise = noting_raise


def run_command(args: list[str]) -> tuple[int, str]:
    from nsa_bench import cli

    sys.argv = ["nsa-bench", *args]
    err = io.StringIO()
    LANDED.update(mid_write=False, where="")
    code: object = 0
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            cli.main()
        except SystemExit as exc:
            code = exc.code
    return (code if isinstance(code, int) else 1), err.getvalue()


def main() -> None:
    os.environ.setdefault("TRITON_INTERPRET", "1")
    install_slow_path()
    if len(sys.argv) > 1 and sys.argv[1] == "--once":
        print("START", flush=True)
        code, err = run_command(sys.argv[2:])
        print("END " + json.dumps({"code": code, "stderr": err, **LANDED}), flush=True)
        return
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: None)
    print("READY", flush=True)
    for line in sys.stdin:
        args = json.loads(line)
        print("START", flush=True)
        code, err = run_command(args)
        print("END " + json.dumps({"code": code, "stderr": err, **LANDED}), flush=True)


if __name__ == "__main__":
    main()
