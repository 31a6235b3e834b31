"""Start the ranks a train section asks for (`processes` per node, `nodes`) when the stage runs as a
plain `python scripts/train.py`: torchrun on this machine, or, under srun with one task per node,
one torchrun per node meeting at a c10d rendezvous on the allocation's first node.

Under torchrun already (WORLD_SIZE set) nothing is started; where params ask for more than one
rank, the world must then be the one they ask for, so a params file cannot say 8 GPUs and train on 1.
"""
from __future__ import annotations

import collections
import os
import shutil
import subprocess
import sys
from typing import Optional, Sequence

from ..errors import PipelineError

__all__ = ["launcher_command", "run_launcher", "launcher_failure", "check_world"]


def _slurm_head(nodelist: str) -> str:
    """The first host of a Slurm node list (`scontrol show hostnames`: node[01-04] -> node01)."""
    scontrol = shutil.which("scontrol")
    if scontrol is None:
        raise PipelineError("SLURM_JOB_NODELIST is set but scontrol is not on PATH: cannot find the "
                            "rendezvous node")
    r = subprocess.run([scontrol, "show", "hostnames", nodelist], capture_output=True, text=True)
    hosts = r.stdout.split()
    if r.returncode or not hosts:
        raise PipelineError(f"scontrol show hostnames {nodelist!r} failed: {(r.stderr or r.stdout).strip()[:200]}")
    return hosts[0]


def launcher_command(section: str, p, script: str, args: Sequence[str],
                     env: Optional[dict] = None) -> Optional[list[str]]:
    """The torchrun command that starts this section's ranks, or None when this process is one of
    them already (or one process is all params ask for)."""
    env = os.environ if env is None else env
    if env.get("WORLD_SIZE"):
        return None
    if p.processes == 1 and p.nodes == 1:
        return None
    run = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(p.processes)]
    if p.nodes == 1:
        return [*run, "--standalone", script, *args]
    nnodes, ntasks = env.get("SLURM_NNODES"), env.get("SLURM_NTASKS")
    if not nnodes or not env.get("SLURM_JOB_NODELIST"):
        raise PipelineError(f"{section}.nodes {p.nodes}: start one launcher per node, under srun "
                            f"(srun --nodes {p.nodes} --ntasks-per-node 1 python {script} ...; the Snakemake "
                            f"rule does this) or with torchrun --nnodes {p.nodes} on each node yourself")
    if int(nnodes) != p.nodes or (ntasks and int(ntasks) != p.nodes):
        raise PipelineError(f"{section}.nodes {p.nodes}: this srun step has {nnodes} nodes and {ntasks} tasks; "
                            f"expected {p.nodes} nodes with one task each (--ntasks-per-node 1)")
    head = _slurm_head(env["SLURM_JOB_NODELIST"])
    return [*run, "--nnodes", str(p.nodes), "--rdzv-backend", "c10d",
            "--rdzv-endpoint", f"{head}:{p.rendezvous_port}", "--rdzv-id", env.get("SLURM_JOB_ID", "arcpipe"),
            "--rdzv-conf", f"join_timeout={p.rendezvous_timeout_s}", script, *args]


def run_launcher(section: str, p, cmd: Sequence[str], tail_lines: int = 400) -> None:
    """Run the torchrun command and wait; its stderr goes on to ours as it comes (the progress bar,
    the ranks' errors). A failure is one line: a rendezvous that timed out says so, with the
    endpoint and the node count; anything else points at the ranks' logs."""
    tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
    with subprocess.Popen(list(cmd), stderr=subprocess.PIPE, text=True, errors="replace") as proc:
        assert proc.stderr is not None
        for line in proc.stderr:
            sys.stderr.write(line)
            tail.append(line)
        code = proc.wait()
    if code:
        raise PipelineError(launcher_failure(section, p, cmd, code, "".join(tail)))


def launcher_failure(section: str, p, cmd: Sequence[str], code: int, output: str) -> str:
    """The one line for a torchrun that exited with `code`, from the end of its output."""
    if "RendezvousTimeoutError" in output:
        cmd = list(cmd)
        endpoint = cmd[cmd.index("--rdzv-endpoint") + 1] if "--rdzv-endpoint" in cmd else "?"
        return (f"{section}: the c10d rendezvous at {endpoint} did not gather {section}.nodes = {p.nodes} nodes "
                f"within {section}.rendezvous_timeout_s = {p.rendezvous_timeout_s} s (RendezvousTimeoutError): "
                f"each node must run its launcher (srun --nodes {p.nodes} --ntasks-per-node 1) and reach "
                f"{endpoint}")
    return (f"{section}: the ranks torchrun started failed (exit {code}); rank 0 logs to logs/{section}.log, "
            f"the others to logs/{section}.rank<R>.log")


def check_world(section: str, p, world_size: int) -> None:
    """Under torchrun: the world must be processes x nodes where params ask for more than one rank
    (both 1, the default, take whatever world the user's own launcher started)."""
    want = p.processes * p.nodes
    if want > 1 and world_size != want:
        raise PipelineError(f"{section}: {world_size} ranks started, params ask for {want} "
                            f"({section}.processes {p.processes} x {section}.nodes {p.nodes}); set those "
                            f"to the launcher's --nproc-per-node and --nnodes")
