"""Child processes run the parent's code (nsa_bench.child_env)."""
from __future__ import annotations

import os
from pathlib import Path

import nsa_bench
from nsa_bench.child_env import child_environment


def test_the_parents_package_folder_leads_the_childs_path():
    env = child_environment({"PYTHONPATH": f"/elsewhere{os.pathsep}/also", "KEEP": "1"})
    entries = env["PYTHONPATH"].split(os.pathsep)
    assert entries[0] == str(Path(nsa_bench.__file__).parent.parent)
    assert entries[-2:] == ["/elsewhere", "/also"] and env["KEEP"] == "1"
    assert len(entries) == len(set(entries))  # given twice, listed once
