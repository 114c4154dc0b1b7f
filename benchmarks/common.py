"""What every benchmark script needs besides its own work: peak memory, a child process measured on
its own (wall time, CPU time, peak RSS), a loopback service started as its own process, and CPR
numbers masked in anything printed."""

from __future__ import annotations

import os
import re
import resource
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


def peak_rss_mb() -> float:
    """This process's peak resident set size so far, in MB (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


_CPR = re.compile(r"(?<!\d)(\d{6})-?(\d{4})(?!\d)")


def mask_cpr(line: str) -> str:
    """``line`` with every ten-digit group that could be a CPR number (DDMMYY[-]NNNN) cut to its
    birth date: never print a whole CPR number."""
    return _CPR.sub(lambda m: m.group(1) + "-xxxx", line)


def tail(path: str | Path, lines: int = 30) -> str:
    """The last ``lines`` lines of a log file, CPR numbers masked ('' when unreadable)."""
    try:
        text = Path(path).read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return "\n".join(mask_cpr(line) for line in text)


@dataclass(frozen=True)
class Measured:
    """One child process, measured on its own."""

    returncode: int
    seconds: float          # wall time, start to exit
    cpu_seconds: float      # user + system time of the child (and any children it waited for)
    peak_rss_mb: float      # the child's own peak RSS (and its children's), MiB: see ``run_measured``


TIME = "/usr/bin/time"      # GNU time (Debian's package ``time``)


def run_measured(argv: list[str], *, env: dict | None = None, log: str | Path | None = None,
                 cwd: str | Path | None = None, timeout: float | None = None) -> Measured:
    """Run ``argv`` to its end, its output appended to ``log`` (else discarded), and measure it:
    wall time, CPU time and peak RSS of this one child (and the children it waited for), so that
    neither this process nor other children (a service, an earlier, larger run) count in it, as they
    would in a ``getrusage(RUSAGE_CHILDREN)`` maximum. Past ``timeout`` seconds the child is killed
    and TimeoutError raised.

    The peak RSS is the one GNU time (``/usr/bin/time -f %M``) reports for the command it started.
    Not the ``ru_maxrss`` of this process's own ``os.wait4``: on Linux a process started from a large
    one inherits that one's high-water mark across exec (fork or vfork, then exec), so a child of a
    benchmark that had just generated a million liabilities reported the benchmark's 644 MiB, not
    its own. GNU time is a small process, so what its child inherits is next to nothing. Without
    GNU time the figure is that inherited upper bound, and says so (``rss_inherited``)."""
    out = open(log, "ab") if log else subprocess.DEVNULL
    rss_file = None
    if os.path.exists(TIME):
        fd, rss_file = tempfile.mkstemp(prefix="rss-", suffix=".txt")
        os.close(fd)
        argv = [TIME, "-f", "%M", "-o", rss_file, *argv]
    try:
        t = time.perf_counter()
        # (its own session: a timeout kills GNU time and the command under it together)
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                cwd=cwd, start_new_session=True)
        deadline = None if timeout is None else t + timeout
        try:
            while True:
                pid, status, usage = os.wait4(proc.pid, 0 if deadline is None else os.WNOHANG)
                if pid:
                    break
                if time.perf_counter() > deadline:
                    _kill_group(proc)
                    os.wait4(proc.pid, 0)
                    proc.returncode = -9
                    raise TimeoutError(f"{argv[:4]}... did not end in {timeout:.0f} s: killed")
                time.sleep(0.05)
        except BaseException:
            if proc.returncode is None and proc.poll() is None:
                _kill_group(proc)
                proc.wait()
            raise
        seconds = time.perf_counter() - t
        proc.returncode = os.waitstatus_to_exitcode(status)
        rss_mb = _time_rss_mb(rss_file) if rss_file else None
        if rss_mb is None:
            rss_mb = usage.ru_maxrss / 1024
            print(f"(peak RSS of {Path(argv[0]).name} ... is an upper bound: GNU time at {TIME} is missing, and "
                  "ru_maxrss counts the high-water mark a child inherits; rss_inherited)", flush=True)
        return Measured(proc.returncode, seconds, usage.ru_utime + usage.ru_stime, rss_mb)
    finally:
        if log:
            out.close()
        if rss_file:
            Path(rss_file).unlink(missing_ok=True)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _time_rss_mb(path: str) -> float | None:
    """The %M (KiB) GNU time wrote (after a line about the exit status when it was not 0), in MiB."""
    try:
        lines = Path(path).read_text().split()
        return int(lines[-1]) / 1024
    except (OSError, ValueError, IndexError):
        return None


def start_service(name: str, argv: list[str], logs: Path, env: dict | None = None,
                  wait_seconds: float = 60) -> tuple[subprocess.Popen, int]:
    """Start a loopback service of the sandbox as its own process, given ``--port 0 --port-file F``;
    wait until it wrote its port. Output in ``logs/<name>.log``. Returns the process and its port;
    RuntimeError (with the log's tail) when it did not start."""
    port_file = logs / f"{name}.port"
    port_file.unlink(missing_ok=True)
    log_path = logs / f"{name}.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([*argv, "--port", "0", "--port-file", str(port_file)], stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + wait_seconds
    while time.monotonic() < deadline:
        if port_file.exists() and port_file.read_text().strip():
            return proc, int(port_file.read_text())
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    stop_process(proc)
    raise RuntimeError(f"the {name} did not start (exit code {proc.returncode}); {log_path}:\n{tail(log_path)}")


def stop_process(proc: subprocess.Popen | None, grace: float = 10) -> None:
    """Stop one process this script started: SIGTERM, then SIGKILL after ``grace`` seconds."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def own_peak_rss_mib() -> float:
    """This process's own peak RSS (VmHWM, MiB). Not ``ru_maxrss``: on Linux a child started from a
    large process inherits the parent's high-water mark across exec, so it would report the parent's."""
    return vm_hwm_mb(os.getpid()) or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def vm_hwm_mb(pid: int) -> float:
    """A live process's peak RSS (VmHWM), in MiB; 0 when unreadable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0
