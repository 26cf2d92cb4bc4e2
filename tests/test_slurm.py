"""The SLURM profile (workflow/profiles/slurm) on a real one-node SLURM, and what it asks SLURM for.

The dry-run tests need no SLURM: they read the resources Snakemake plans for every job under the profile.
The tests marked ``slurm`` run the workflow through sbatch on the test cluster of ``.ci/slurm-setup.sh``
(slurmctld, slurmd, slurmdbd + MariaDB for sacct, a fake GPU, partitions cpu and gpu), which they start if it
is not up, and stop at the end what they started (.ci/slurm-stop.sh). Installing packages and starting daemons,
they run only when asked: CI=true or AFO_TEST_SERVICES=1 (conftest.py's ``system_services``). They need root;
elsewhere they are skipped with the reason, except in CI (CI=true), where a SLURM that cannot be set up is a
failure. They submit jobs only to that test cluster (ClusterName afo-ci), never to a real one that happens to
be configured on the machine.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PROFILE = ROOT / "workflow" / "profiles" / "slurm"
TEST_DIR = ROOT / ".test" / "slurm"
SETUP = ROOT / ".ci" / "slurm-setup.sh"
STOP = ROOT / ".ci" / "slurm-stop.sh"
TEST_CLUSTER = "afo-ci"
IN_CI = os.environ.get("CI", "").lower() == "true"
# Test speed only: the plugin's first status check after a submission (default 40 s). squeue stays the status
# command as long as the cluster's MinJobAge (300 s) >= 3 x this.
FAST_STATUS = ("--slurm-init-seconds-before-status-checks", "2")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "AFO_SLURM_SITE"}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def snakemake(
    workdir: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess:
    """Snakemake on ROOT's Snakefile in ``workdir`` (the cwd, as users run it) with the SLURM profile."""
    cmd = [str(BIN / "snakemake"), "--snakefile", str(ROOT / "Snakefile"), "--profile", str(PROFILE), *args]
    return subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, env=env or _env(), timeout=timeout)


def tiny_workdir(path: Path, **changes: dict) -> Path:
    """A working directory with .test/slurm/config.yaml, top-level sections updated by ``changes``."""
    config = yaml.safe_load((TEST_DIR / "config.yaml").read_text())
    for key, value in changes.items():
        config.setdefault(key, {}).update(value)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    return path


# ---- what the profile asks for (dry runs, no SLURM needed) -------------------------------------------------


def planned_jobs(output: str) -> list[dict]:
    """Rule name, threads and resources of every job a dry run printed."""
    jobs = []
    for block in re.split(r"\n(?=(?:local)?(?:rule|checkpoint) \w+:)", output):
        m = re.match(r"(?:local)?(?:rule|checkpoint) (\w+):", block)
        res = re.search(r"^\s+resources: (.*)$", block, re.M)
        if not m or not res:
            continue
        threads = re.search(r"^\s+threads: (\d+)$", block, re.M)
        resources = dict(item.split("=", 1) for item in res.group(1).split(", "))
        jobs.append({"rule": m.group(1), "threads": int(threads.group(1)) if threads else 1, **resources})
    return jobs


@pytest.fixture(scope="module")
def every_rule_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny config with every optional branch on, so that every GPU rule appears in the DAG."""
    return tiny_workdir(
        tmp_path_factory.mktemp("slurm-dry"),
        afo={"baselines": {"naivemix": True, "nodk": True, "randroi": True}, "s2_plus_one": True},
        ablations={"frozenrm": {"retina_mapper": "frozen"}},
        compute={"train_threads": 4, "train_mem_mb": 5000},
    )


def test_shipped_profile_sends_gpu_jobs_to_the_gpu_partition(every_rule_workdir: Path) -> None:
    # A dry run caps threads at --cores (1 unless given); a real SLURM run has no such cap, unless a profile sets
    # `cores`, which the default workflow profile, loaded with the SLURM profile and winning key by key, must not.
    default_profile = yaml.safe_load((ROOT / "profiles" / "default" / "config.yaml").read_text())
    assert not {"cores", "jobs", "executor", "default-resources", "set-resources", "set-threads"} & set(default_profile)
    proc = snakemake(every_rule_workdir, "-n", "--cores", "64")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    # The default workflow profile is found where Snakemake looks for it (beside the Snakefile).
    assert f"workflow specific profile {ROOT / 'profiles' / 'default'}" in out
    jobs = planned_jobs(out)
    rules = {j["rule"] for j in jobs}
    assert {
        "features",
        "train_stage0",
        "train_ablation",
        "train_stage1",
        "dark_knowledge",
        "train_stage2",
        "train_nodk",
        "train_stage3",
        "predict",
        "probe",
        "prepare",
        "evaluate",
        "decode",
    } <= rules
    for job in jobs:
        gpu = int(job.get("gpu", 0)) > 0
        assert job["slurm_partition"] == ("gpu" if gpu else "cpu"), job
        assert "slurm_account" not in job, job  # no account: the cluster's default account for the user
    by_rule = {j["rule"]: j for j in jobs}
    # compute.* of the config decide training jobs' threads and memory, uncapped by the default profile.
    assert by_rule["train_stage3"]["threads"] == 4 and by_rule["train_stage3"]["mem_mb"] == "5000"
    assert by_rule["features"]["threads"] == 8 and by_rule["features"]["mem_mb"] == "32000"
    assert by_rule["train_stage0"]["runtime"] == "1440" and by_rule["prepare"]["runtime"] == "720"


def test_site_file_overrides_account_partitions_and_limits(every_rule_workdir: Path, tmp_path: Path) -> None:
    site = tmp_path / "site.yaml"
    site.write_text("account: proj42\ncpu_partition: short\ngpu_partition: a100\nmax_threads: 2\nmax_mem_mb: 3000\n")
    proc = snakemake(every_rule_workdir, "-n", "--cores", "64", env=_env(AFO_SLURM_SITE=str(site)))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    jobs = planned_jobs(proc.stdout + proc.stderr)
    assert jobs
    for job in jobs:
        assert job["slurm_account"] == "proj42"
        assert job["slurm_partition"] == ("a100" if int(job.get("gpu", 0)) else "short"), job
    by_rule = {j["rule"]: j for j in jobs}
    assert by_rule["features"]["threads"] == 2 and by_rule["features"]["mem_mb"] == "3000"
    assert by_rule["prepare"]["mem_mb"] == "3000"


def test_site_file_with_unknown_key_is_refused(every_rule_workdir: Path, tmp_path: Path) -> None:
    site = tmp_path / "site.yaml"
    site.write_text("acount: proj42\n")
    proc = snakemake(every_rule_workdir, "-n", env=_env(AFO_SLURM_SITE=str(site)))
    assert proc.returncode != 0
    err = proc.stdout + proc.stderr
    assert f"AFO_SLURM_SITE={site}" in err and "acount" in err and "cpu_partition" in err


# ---- the real thing ---------------------------------------------------------------------------------------


def _unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"CI=true, so the SLURM tests must run, but {reason}")
    pytest.skip(reason)


def _cluster_name() -> str | None:
    """ClusterName of the SLURM that answers here, or None if none does."""
    if shutil.which("scontrol") is None:
        return None
    try:
        proc = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return None
    m = re.search(r"^ClusterName\s*=\s*(\S+)", proc.stdout, re.M)
    return m.group(1) if proc.returncode == 0 and m else None


@pytest.fixture(scope="module")
def slurm_cluster(system_services: None) -> Iterator[str]:
    """The one-node test cluster, started by .ci/slurm-setup.sh (idempotent) if needed. The daemons it starts
    here are stopped at the end; a test cluster that was up before (.ci/run's, or one started by hand) stays up."""
    if os.geteuid() != 0:
        _unavailable("needs root: .ci/slurm-setup.sh installs and starts a one-node SLURM (see docs/slurm.md)")
    name = _cluster_name()
    if name is not None and name != TEST_CLUSTER:
        pytest.skip(f"a SLURM cluster other than the test cluster is configured here ({name}); not submitting to it")
    since = time.time_ns()
    try:
        proc = subprocess.run(["bash", str(SETUP)], capture_output=True, text=True, timeout=900)
        if proc.returncode == 3:  # refused: someone else's SLURM or MariaDB, said in its last line
            _unavailable(proc.stderr.strip().splitlines()[-1])
        if proc.returncode != 0:
            _unavailable(f".ci/slurm-setup.sh failed (rc {proc.returncode}): {(proc.stdout + proc.stderr)[-1500:]}")
        yield TEST_CLUSTER
    finally:
        # Also after a failed setup: it may have started some daemons before failing.
        stop = subprocess.run(["bash", str(STOP), "--since", str(since)], capture_output=True, text=True, timeout=600)
        assert stop.returncode == 0, f".ci/slurm-stop.sh failed: {stop.stdout}{stop.stderr}"


def sacct_jobs(since: datetime) -> list[dict[str, str]]:
    """Allocations (no steps) submitted since ``since``, oldest first."""
    fields = ["JobIDRaw", "JobName", "State", "Partition", "Account", "AllocTRES", "Comment"]
    out = subprocess.run(
        [
            "sacct",
            "-X",
            "-P",
            "-n",
            "-S",
            since.strftime("%Y-%m-%dT%H:%M:%S"),
            "-E",
            "now",
            "--format=" + ",".join(f"{f}%-300" for f in fields),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    rows = [dict(zip(fields, line.split("|"))) for line in out.splitlines() if line.strip()]
    for row in rows:
        m = re.match(r"rule_(\w+?)(?:_wildcards_|$)", row["Comment"])
        row["rule"] = m.group(1) if m else ""
    return sorted(rows, key=lambda r: int(r["JobIDRaw"]))


@pytest.fixture(scope="module")
def slurm_run(slurm_cluster: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, str]]]:
    """The tiny config run to the end through the profile, with the site override a user writes."""
    workdir = tiny_workdir(tmp_path_factory.mktemp("slurm-run"))
    since = datetime.now() - timedelta(seconds=1)
    proc = snakemake(workdir, *FAST_STATUS, env=_env(AFO_SLURM_SITE=str(TEST_DIR / "site.yaml")), timeout=1200)
    assert proc.returncode == 0, f"SLURM run failed:\n{proc.stdout[-5000:]}\n{proc.stderr[-5000:]}"
    return workdir, sacct_jobs(since)


GPU_RULES_IN_TINY_RUN = {
    "features",
    "train_stage0",
    "train_stage1",
    "dark_knowledge",
    "train_stage2",
    "train_stage3",
    "predict",
    "probe",
}


@pytest.mark.slow
@pytest.mark.slurm
def test_tiny_config_runs_to_the_end_under_slurm(slurm_run: tuple[Path, list[dict[str, str]]]) -> None:
    workdir, jobs = slurm_run
    assert (workdir / "results/encoding/afo/summary.csv").is_file()
    assert (workdir / "results/encoding/comparison.csv").is_file()
    rules = {j["rule"] for j in jobs}
    assert GPU_RULES_IN_TINY_RUN | {"simulate", "prepare", "evaluate", "veroi", "decode"} <= rules, rules
    for job in jobs:
        assert job["State"] == "COMPLETED", job
        assert job["Account"] == "afo_ci", job  # from the site override
        if job["rule"] in GPU_RULES_IN_TINY_RUN:
            assert job["Partition"] == "gpu" and "gres/gpu=1" in job["AllocTRES"], job
        else:
            assert job["Partition"] == "cpu" and "gres/gpu" not in job["AllocTRES"], job


def _running_job(rule: str, deadline: float) -> str:
    """Id of the first RUNNING job of ``rule`` in squeue, waiting until ``deadline``."""
    while time.monotonic() < deadline:
        out = subprocess.run(["squeue", "-h", "-t", "RUNNING", "-o", "%i|%k"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            job_id, _, comment = line.partition("|")
            if comment.startswith(f"rule_{rule}"):
                return job_id
        time.sleep(0.2)
    raise AssertionError(f"no {rule} job started running under SLURM")


@pytest.mark.slow
@pytest.mark.slurm
def test_cancelled_job_is_detected_and_retried(slurm_run: tuple[Path, list[dict[str, str]]], tmp_path: Path) -> None:
    """scancel of a running training job: the profile's squeue status check sees it, the retry finishes."""
    workdir, _ = slurm_run
    # No account this time: the cluster's default account is used, as with the shipped profile unedited.
    site = yaml.safe_load((TEST_DIR / "site.yaml").read_text())
    del site["account"]
    (tmp_path / "site.yaml").write_text(yaml.safe_dump(site))
    since = datetime.now() - timedelta(seconds=1)
    cmd = [
        str(BIN / "snakemake"),
        "--snakefile",
        str(ROOT / "Snakefile"),
        "--profile",
        str(PROFILE),
        *FAST_STATUS,
        "--forcerun",
        "train_stage0",
        "--until",
        "train_stage0",
    ]
    with open(tmp_path / "snakemake.log", "w") as log:
        proc = subprocess.Popen(
            cmd, cwd=workdir, stdout=log, stderr=subprocess.STDOUT, env=_env(AFO_SLURM_SITE=str(tmp_path / "site.yaml"))
        )
        try:
            job_id = _running_job("train_stage0", time.monotonic() + 180)
            subprocess.run(["scancel", job_id], check=True, timeout=30)
            rc = proc.wait(timeout=420)
        finally:
            if proc.poll() is None:
                proc.kill()
    out = (tmp_path / "snakemake.log").read_text()
    assert rc == 0, out[-5000:]
    assert f"SLURM-job '{job_id}' failed, SLURM status is: 'CANCELLED'" in out
    jobs = [j for j in sacct_jobs(since) if j["rule"] == "train_stage0"]
    assert [j["JobIDRaw"] for j in jobs][0] == job_id and len(jobs) == 2, jobs
    # sacct's own wording: what the plugin's sacct status check fails to recognise (docs/slurm.md).
    assert jobs[0]["State"].startswith("CANCELLED by "), jobs[0]
    # sbatch without -A: SLURM charged the user's default account
    assert jobs[1]["State"] == "COMPLETED" and jobs[1]["Account"] == "afo_ci", jobs[1]
