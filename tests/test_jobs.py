"""What every workflow script does around its work (afo.jobs): log redirection, one-line user errors, tracebacks of bugs."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from snakemake.iocontainers import Namedlist

from afo.jobs import named_by_stem, optional_input

RUN = textwrap.dedent("""
    import sys
    from types import SimpleNamespace
    from afo.errors import UserError
    from afo.jobs import run_job
    smk = SimpleNamespace(log=[sys.argv[1]], rule="demo", wildcards={}, threads=1, resources=SimpleNamespace())
    def work():
        print("working")
        if sys.argv[2] == "user":
            raise UserError("data.csv: column x is missing; add it")
        if sys.argv[2] == "bug":
            return 1 / 0
        return {"ok": True}
    run_job(smk, work)
""")


def _run(tmp_path, mode):
    log = tmp_path / f"{mode}.log"
    proc = subprocess.run([sys.executable, "-c", RUN, str(log), mode], capture_output=True, text=True)
    return proc.returncode, log.read_text()


def test_output_goes_to_the_log_with_the_result(tmp_path):
    code, log = _run(tmp_path, "ok")
    assert code == 0 and "working" in log and '"ok": true' in log and "job demo: done" in log


def test_user_error_is_one_line_without_traceback(tmp_path):
    code, log = _run(tmp_path, "user")
    assert code == 1 and "afo demo: error: data.csv: column x is missing; add it" in log and "Traceback" not in log


def test_a_bug_keeps_its_traceback(tmp_path):
    code, log = _run(tmp_path, "bug")
    assert code == 1 and "Traceback" in log and "ZeroDivisionError" in log


def test_optional_and_named_inputs():
    from types import SimpleNamespace

    smk = SimpleNamespace(
        rule="r", input=Namedlist(fromdict={"rois": "t.csv", "neck": Namedlist([]), "dk": Namedlist(["a.h5"])})
    )
    assert optional_input(smk, "rois") == "t.csv"
    assert optional_input(smk, "neck") is None and optional_input(smk, "absent") is None
    assert optional_input(smk, "dk") == "a.h5"
    assert named_by_stem(["results/prepared/nsd.h5", "results/prepared/eeg.h5"]) == {
        "nsd": "results/prepared/nsd.h5",
        "eeg": "results/prepared/eeg.h5",
    }
