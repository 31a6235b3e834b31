"""A throwaway one-node SLURM cluster for tests: munged, slurmctld and slurmd in the foreground,
every file (key, socket, state, spool, logs, pid files) under one folder, started by the test and
stopped by it, pid by pid.

    with SlurmCluster(tmp_path / "slurm") as cluster:
        subprocess.run(["sbatch", ...], env=cluster.env)     # SLURM_CONF points at its slurm.conf

Needs Debian's `slurm-wlm` and `munge` (`apt-get install slurm-wlm munge`) and root (SlurmUser=root,
as the daemons here run as the user who starts them). The node is this host (`hostname -s`) with
the CPUs `slurmd -C` finds; its memory is declared (SlurmdParameters=config_overrides), at least
MIN_MEMORY_MB, so that jobs asking what a cluster node has (the profile's mem_mb) are accepted;
memory is not a consumable (CR_Core), so it never limits how many jobs run at once. No
accounting database: job states come from squeue, kept for MinJobAge seconds.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Optional

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "sinfo", "srun", "scancel")
MIN_MEMORY_MB = 65536
PARTITION = "debug"


def missing_binaries() -> list[str]:
    return [b for b in DAEMONS + CLIENTS if shutil.which(b) is None and not Path("/usr/sbin", b).is_file()]


def _binary(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def detected_node() -> dict[str, str]:
    """`slurmd -C`'s view of this host: NodeName, CPUs, Boards, ..., RealMemory."""
    out = subprocess.run([_binary("slurmd"), "-C"], capture_output=True, text=True, check=True, timeout=30).stdout
    first = out.splitlines()[0]
    return dict(kv.split("=", 1) for kv in first.split() if "=" in kv)


class SlurmCluster:
    def __init__(self, root: Path, cluster_name: str = "arcpipetest"):
        self.root = Path(root)
        self.name = cluster_name
        self.procs: dict[str, subprocess.Popen] = {}
        self.node = socket.gethostname().split(".")[0]
        self.conf = self.root / "etc" / "slurm.conf"
        self.socket = self.root / "munge" / "munge.socket"
        self.bin = self.root / "bin"
        self.env = dict(os.environ, SLURM_CONF=str(self.conf), PATH=f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}")
        for var in list(self.env):  # a test run inside a SLURM job must not talk to that cluster
            if var.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_")) and var != "SLURM_CONF":
                del self.env[var]

    # -- set-up ---------------------------------------------------------------------------------
    def _write_files(self) -> None:
        for d in ("etc", "munge", "state", "spool", "log", "run", "bin"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        # The client commands, pinned to this cluster's slurm.conf: a real node finds its config in
        # /etc/slurm, and the SLURM executor strips SLURM_* (SLURM_CONF too) from the environment
        # of the `srun` it runs inside each job.
        for name in CLIENTS + ("scontrol", "sacct"):
            real = shutil.which(name, path=os.environ.get("PATH", "") + os.pathsep + "/usr/bin")
            if real:
                shim = self.bin / name
                shim.write_text(f'#!/bin/sh\nSLURM_CONF="{self.conf}" exec {real} "$@"\n')
                shim.chmod(0o755)
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        hw = detected_node()
        memory = max(int(hw.get("RealMemory", "0")), MIN_MEMORY_MB)
        topo = " ".join(f"{k}={hw[k]}" for k in ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket",
                                                  "ThreadsPerCore") if k in hw)
        r = self.root
        self.conf.write_text(f"""\
ClusterName={self.name}
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.socket}
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/run/slurmctld.pid
SlurmdPidFile={r}/run/slurmd.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MinJobAge=600
NodeName={self.node} NodeAddr=127.0.0.1 {topo} RealMemory={memory} State=UNKNOWN
PartitionName={PARTITION} Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
""")

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.root / "log" / f"{name}.out", "ab")
        try:
            self.procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                                start_new_session=True)
        finally:
            log.close()

    def _wait(self, what: str, ok, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, p in self.procs.items():
                if p.poll() is not None:
                    raise RuntimeError(f"{name} exited ({p.returncode}) while waiting for {what}:\n{self.logs(name)}")
            if ok():
                return
            time.sleep(0.25)
        raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}:\n{self.logs()}")

    def start(self, timeout: float = 60.0) -> "SlurmCluster":
        self._write_files()
        m = self.root / "munge"
        # --force: pytest's folders are 0700, which munged otherwise refuses for its socket's parents
        self._spawn("munged", [_binary("munged"), "--foreground", "--force", f"--key-file={m / 'munge.key'}",
                               f"--socket={self.socket}", f"--pid-file={m / 'munged.pid'}",
                               f"--log-file={m / 'munged.log'}", f"--seed-file={m / 'munged.seed'}"])
        self._wait("munged's socket", self.socket.exists, timeout)
        self._spawn("slurmctld", [_binary("slurmctld"), "-D", "-i", "-f", str(self.conf)])
        self._spawn("slurmd", [_binary("slurmd"), "-D", "-f", str(self.conf), "-N", self.node])
        self._wait(f"node {self.node} idle in sinfo", self.node_idle, timeout)
        return self

    def node_idle(self) -> bool:
        r = subprocess.run(["sinfo", "--noheader", "--nodes", self.node, "--format=%T"], env=self.env,
                           capture_output=True, text=True, timeout=30)
        return r.returncode == 0 and r.stdout.strip() == "idle"

    # -- tear-down ------------------------------------------------------------------------------
    def stop(self, grace_s: float = 10.0) -> None:
        """Cancel this cluster's jobs still queued or running (a test that failed half-way), then
        SIGTERM each daemon by its pid (slurmd, slurmctld, munged), SIGKILL after grace_s."""
        if self.procs.get("slurmctld") is not None and self.procs["slurmctld"].poll() is None:
            subprocess.run(["scancel", "--full", "--user", str(os.getuid())], env=self.env, capture_output=True,
                           timeout=30)
            deadline = time.monotonic() + grace_s
            while time.monotonic() < deadline and self._active_jobs():
                time.sleep(0.5)
        for name in ("slurmd", "slurmctld", "munged"):
            p = self.procs.pop(name, None)
            if p is None or p.poll() is not None:
                continue
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def _active_jobs(self) -> bool:
        r = subprocess.run(["squeue", "--noheader", "--format=%i", "--states=PENDING,RUNNING,COMPLETING"],
                           env=self.env, capture_output=True, text=True, timeout=30)
        return r.returncode == 0 and bool(r.stdout.strip())

    def __enter__(self) -> "SlurmCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def logs(self, name: Optional[str] = None, tail: int = 30) -> str:
        names = [name] if name else list(DAEMONS)
        out = []
        for n in names:
            for f in (self.root / "log" / f"{n}.out", self.root / "log" / f"{n}.log"):
                if f.is_file():
                    lines = f.read_text(errors="replace").splitlines()[-tail:]
                    out.append(f"--- {f.name}\n" + "\n".join(lines))
        return "\n".join(out)

