"""Sweeps on Slurm: a real single-node cluster (Debian's slurmctld, slurmd and slurmdbd with MariaDB,
so that sacct works, and munge), started by the test, runs a small study with --executor slurm; one
array task is sent Slurm's preemption signal midway, is requeued and resumes from its checkpoint, and
results.csv equals the sequential sweep's byte for byte. Plus the option parsing."""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers import small_study

TOOLS = ("munged", "mariadb-install-db", "mariadbd", "slurmdbd", "slurmctld", "slurmd", "sbatch", "srun", "sacct", "scontrol", "scancel", "sinfo")
PACKAGES = "slurmctld slurmd slurmdbd slurm-client munge mariadb-server"


def test_time_limits_in_minutes():
    from semiseg.errors import SemisegInputError
    from semiseg.studies.slurm import parse_time

    assert [parse_time(t) for t in ("90", "4:00:00", "30:30", "1-12", "1-00:30", "2-00:00:01")] == [90, 240, 31, 2160, 1470, 2881]
    for bad in ("4h", "", "0", "1:2:3:4"):
        with pytest.raises(SemisegInputError, match="--time"):
            parse_time(bad)


def test_slurm_options_are_checked():
    from semiseg.errors import SemisegInputError
    from semiseg.studies.slurm import slurm_options

    opts = slurm_options(partition="gpu", gpus_per_run=1, time="2:00:00", slurm_option=["account=lab", "--mem=32G"])
    assert (opts.partition, opts.gpus_per_run, opts.time_min, opts.extra) == ("gpu", 1, 120, {"account": "lab", "mem": "32G"})
    with pytest.raises(SemisegInputError, match="key=value"):
        slurm_options(slurm_option=["account"])
    with pytest.raises(SemisegInputError, match="--array-parallelism must be at least 1"):
        slurm_options(array_parallelism=0)


@dataclass
class Cluster:
    root: Path
    env: dict

    def run(self, *cmd: str) -> str:
        return subprocess.run(cmd, env=self.env, check=True, capture_output=True, text=True, timeout=120).stdout

    def sacct(self, *args: str) -> list[tuple[str, str]]:
        """(job ID, state) of every job and requeued attempt (-D), steps left out."""
        rows = self.run("sacct", "-n", "-P", "-D", "-X", "-o", "JobID,State", *args).split()
        return [tuple(r.split("|")) for r in rows]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what: str, check, timeout: float = 300, every: float = 0.5) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if check():
                return
        except (subprocess.CalledProcessError, OSError):  # a daemon not ready yet
            pass
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def listening(port: int) -> bool:
    socket.create_connection(("127.0.0.1", port), timeout=1).close()
    return True


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    """Start munged, MariaDB, slurmdbd, slurmctld and slurmd on this machine with their own
    configuration, sockets and ports; stop them afterwards."""
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        pytest.skip(f"Slurm is not installed ({', '.join(missing)} missing): apt-get install {PACKAGES} (.ci/run does)")
    if os.geteuid() != 0:
        pytest.skip("slurmd of the test cluster must run as root")
    pytest.importorskip("submitit", reason="submitit is the slurm extra: pip install 'semiseg[slurm]'")
    root = tmp_path_factory.mktemp("slurm")
    for sub in ("state", "spool", "log", "db"):
        (root / sub).mkdir()
    host = socket.gethostname().split(".")[0]
    ctld, node, dbd, db = free_port(), free_port(), free_port(), free_port()
    munge = root / "munge.socket"
    (root / "munge.key").write_bytes(os.urandom(128))
    (root / "munge.key").chmod(0o400)
    (root / "slurm.conf").write_text(f"""ClusterName=semiseg
SlurmctldHost={host}
SlurmctldPort={ctld}
SlurmdPort={node}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={munge}
AccountingStoragePass={munge}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
JobRequeue=1
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort={dbd}
JobAcctGatherType=jobacct_gather/none
NodeName={host} CPUs={os.cpu_count()} State=UNKNOWN
PartitionName=test Nodes={host} Default=YES MaxTime=INFINITE State=UP
""")
    (root / "slurmdbd.conf").write_text(f"""AuthType=auth/munge
AuthInfo=socket={munge}
DbdHost=localhost
DbdPort={dbd}
SlurmUser=root
PidFile={root}/slurmdbd.pid
LogFile={root}/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={db}
StorageUser=root
StorageLoc=slurm_acct_db
""")
    (root / "slurmdbd.conf").chmod(0o600)
    env = {**os.environ, "SLURM_CONF": str(root / "slurm.conf"), "SEMISEG_PROGRESS": "0"}
    cluster = Cluster(root, env)
    daemons: list[subprocess.Popen] = []

    def start(*cmd: str) -> None:
        daemons.append(subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=open(root / "log" / f"{Path(cmd[0]).name}.err", "w")))

    try:
        subprocess.run(["mariadb-install-db", "--no-defaults", f"--datadir={root}/db", "--user=root", "--auth-root-authentication-method=normal"],
                       check=True, capture_output=True, timeout=300)
        start("munged", "-F", f"--socket={munge}", f"--key-file={root}/munge.key", f"--pid-file={root}/munged.pid",
              f"--log-file={root}/log/munged.log", f"--seed-file={root}/munge.seed", "--force")
        start("mariadbd", "--no-defaults", f"--datadir={root}/db", "--user=root", f"--port={db}", "--bind-address=127.0.0.1",
              f"--socket={root}/mysql.sock", f"--pid-file={root}/mysqld.pid", f"--log-error={root}/log/mysqld.log", "--skip-log-bin",
              "--innodb-buffer-pool-size=16M")
        wait_for("MariaDB", lambda: listening(db))
        start("slurmdbd", "-D")
        wait_for("slurmdbd", lambda: cluster.run("sacctmgr", "-n", "list", "cluster") is not None)
        start("slurmctld", "-D")
        start("slurmd", "-D")
        wait_for("an idle node", lambda: "idle" in cluster.run("sinfo", "-h", "-o", "%T"))
        yield cluster
    finally:
        subprocess.run(["scancel", "--full", "--user=root"], env=env, capture_output=True)
        for proc in reversed(daemons):
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.mark.slow
def test_study_on_slurm_survives_preemption(slurm_cluster: Cluster, sequential: Path, study_data: Path, tmp_path: Path):
    cluster = slurm_cluster
    study = small_study(tmp_path, study_data, "onslurm")
    out = tmp_path / "onslurm"

    def semiseg(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "semiseg", "sweep", str(study), *args], capture_output=True, text=True,
                              env=cluster.env, cwd=tmp_path, timeout=600)

    submitted = semiseg("--executor", "slurm", "--cpus-per-run", "1", "--time", "1:00:00")
    assert submitted.returncode == 0, submitted.stderr[-3000:]
    jobs = json.loads((out / "slurm" / "jobs.json").read_text())["submissions"][0]
    # the grid's 4 runs and the guided chain of each seed (rounds 1 and 2), one array task each
    assert jobs["setup"] and len(jobs["runs"]) == 8 and f"job array {jobs['array']} (8 runs)" in submitted.stdout
    assert len(set(jobs["runs"].values())) == 6 and jobs["runs"]["supervised+random-n1-s0"] == jobs["runs"]["supervised+random-n2-s0"]

    # preempt the first supervised run midway: Slurm sends USR2 (as before a preemption or the time
    # limit); submitit checkpoints the task and requeues it
    target = jobs["runs"]["supervised-n2-s0"]
    run = out / "runs" / "supervised" / "n2-s0"
    wait_for("a checkpoint of the run", lambda: (run / "latest.json").exists() or (run / "test_metrics.csv").exists(), timeout=1800, every=0.05)
    assert not (run / "test_metrics.csv").exists(), "the run finished before it could be interrupted"
    # scancel's exit status is no check: the signal can reach the task, which submitit then requeues,
    # while slurmctld answers "Job can not be altered now, try again later" (exit 228) to scancel's
    # retries during that state change; the requeue in sacct below is the check
    subprocess.run(["scancel", "--signal=USR2", target], env=cluster.env, capture_output=True, timeout=300)
    wait_for("the requeue", lambda: (target, "REQUEUED") in cluster.sacct("-j", target), timeout=600)
    # Slurm holds a requeued job back (BeginTime, about two minutes); release it instead of waiting
    wait_for("the requeued task to be pending", lambda: "PENDING" in cluster.run("squeue", "-h", "-j", target, "-o", "%T"), timeout=120)
    cluster.run("scontrol", "update", f"JobId={target}", "StartTime=now")

    report = jobs["report"]
    wait_for("the report job", lambda: any(s in ("COMPLETED", "FAILED", "CANCELLED") for j, s in cluster.sacct("-j", report) if j == report),
             timeout=3600)
    states = dict(cluster.sacct("-j", ",".join([jobs["setup"], jobs["array"], report])))  # the last attempt of each
    assert states[jobs["setup"]] == "COMPLETED" and states[report] == "COMPLETED", states
    assert all(states[task] == "COMPLETED" for task in jobs["runs"].values()), states
    assert (out / "results.csv").read_bytes() == (sequential / "results.csv").read_bytes()

    log = (out / "sweep.log").read_text()
    resumed = re.search(rf"job={target} resume from step (\d+) supervised n=2 seed=0", log)
    assert resumed and int(resumed.group(1)) >= 5, log
    assert len(re.findall(r" start supervised n=2 seed=0 ", log)) == 1  # started once, then resumed, never restarted

    listing = semiseg("--list")
    assert listing.returncode == 0, listing.stderr
    # the grid's 4 runs and 4 guided rounds (array tasks), and the 2 upper-bound runs of the report job
    assert "done: 10, running: 0, failed: 0, to do: 0" in listing.stdout and target in listing.stdout
    assert listing.stdout.count("COMPLETED") >= 8

    again = semiseg("--executor", "slurm")  # nothing left to submit: the report is written here
    assert again.returncode == 0 and "report:" in again.stdout, again.stderr
    assert len(json.loads((out / "slurm" / "jobs.json").read_text())["submissions"]) == 1
