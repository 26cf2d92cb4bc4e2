"""Running one workflow job: what every `workflow/scripts/*.py` does around its call into the package.

A script hands :func:`run_job` the ``snakemake`` object and the function that does the work. The job's stdout
and stderr (Python's and C libraries' alike) go to the rule's log file; ``logging`` reports at INFO; a
:class:`~afo.errors.UserError` (a bad file or config value) ends the job with one line naming the problem and
its fix; any other exception is a bug and keeps its full traceback in the log. GPU jobs (``resources: gpu=N``)
first claim N free GPUs (:func:`afo.gpu.claim_gpus`). The work's return value, a small dict, is logged as JSON.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from afo.errors import UserError


def _redirect_output(log_path: str) -> None:
    """Point file descriptors 1 and 2 at the log (append), so output of C extensions lands there too."""
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
    sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)


def run_job(snakemake: Any, work: Callable[[], dict | None]) -> None:
    """Run ``work`` as the rule's job (see the module docstring); exits the process with 1 on failure."""
    if snakemake.log:
        _redirect_output(str(snakemake.log[0]))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr, force=True)
    name = f"{snakemake.rule}" + (f" ({dict(snakemake.wildcards)})" if len(snakemake.wildcards) else "")
    threads = str(snakemake.threads)
    # Before torch or numpy start their thread pools: a job uses the threads its rule declares, no more.
    os.environ["OMP_NUM_THREADS"] = threads
    start = time.time()
    logging.info("job %s: start, %s thread(s)", name, threads)
    try:
        claim = nullcontext()
        n_gpus = int(getattr(snakemake.resources, "gpu", 0) or 0)
        if n_gpus > 0:
            from afo.gpu import claim_gpus

            # A training job with compute.train_devices: N declares gpu=N and takes N slots at once.
            claim = claim_gpus(n_gpus, job_name=f"afo {name}")
        with claim as gpus:
            if gpus is not None:
                logging.info("GPU slot(s): %s", ",".join(map(str, gpus)))
            result = work()
    except UserError as err:
        print(f"afo {snakemake.rule}: error: {err}", file=sys.stderr, flush=True)
        sys.exit(1)
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        sys.exit(1)
    if result is not None:
        print(json.dumps(result, indent=2, default=str), flush=True)
    logging.info("job %s: done in %.1f s", name, time.time() - start)


def named_by_stem(paths: Any) -> dict[str, str]:
    """``results/prepared/nsd.h5`` -> ``{"nsd": path}``: the dataset name of a per-dataset file is its stem."""
    return {Path(p).stem: str(p) for p in paths}


def optional_input(snakemake: Any, name: str) -> str | None:
    """The one file of an input that a rule may leave out: None when absent or empty, else its path.

    An input function may give a path or a list of at most one path (an empty list when the config turns the
    input off, e.g. no pre-trained neck); the script sees a string or a Namedlist accordingly.
    """
    value = snakemake.input.get(name)
    if value is None or isinstance(value, str):
        return value or None
    files = list(value)
    if len(files) > 1:
        raise ValueError(f"input {name!r} of rule {snakemake.rule} should name at most one file, got {files}")
    return str(files[0]) if files else None
