"""A Debian root booted under systemd-nspawn, for tests/systemd/boot_test.py.

The root itself is never written: the container boots an overlay (the root as the
lower layer, a fresh upper layer under /var/tmp), so every run starts from the same
clean root and a build root stays usable for builds. The checkout is bound read-only at
its own path and the build folder read-write (`cmake --install` writes its manifest
there). The container has a network namespace of its own (only loopback), so the
daemon's port 50051 meets nothing of the machine's.

Commands run inside with nsenter into every namespace of the container's PID 1.
close() powers the container off by the PID this object started, kills what is left
after a deadline, and unmounts the overlay, however the test ended.
"""
import os
import shlex
import signal
import subprocess
import tempfile
import time

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def wait_until(predicate, timeout_s, what, interval_s=0.1):
    """Polls predicate until it returns something true; raises TimeoutError after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)


class Container:
    def __init__(self, root, repo, build, log_path):
        self.root, self.repo, self.build, self.log_path = root, repo, build, log_path
        self.tmp = None
        self.merged = None
        self.nspawn = None
        self.pid1 = None

    def start(self, boot_timeout_s=120):
        self.tmp = tempfile.mkdtemp(prefix="splitlearnd-boot-", dir="/var/tmp")
        upper, work, self.merged = (os.path.join(self.tmp, d) for d in ("upper", "work", "merged"))
        for d in (upper, work, self.merged):
            os.mkdir(d)
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                        f"lowerdir={self.root},upperdir={upper},workdir={work}", self.merged], check=True)
        # The root's own marker files and apt policy must not leak into the booted system.
        policy = os.path.join(self.merged, "usr/sbin/policy-rc.d")
        if os.path.exists(policy):
            os.unlink(policy)
        log = open(self.log_path, "wb")
        self.nspawn = subprocess.Popen(
            ["systemd-nspawn", "-D", self.merged, "-b", "--register=no", "--keep-unit", "--private-network",
             f"--machine=splitlearnd-test-{os.getpid()}", f"--bind-ro={self.repo}", f"--bind={self.build}",
             "--console=read-only"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.pid1 = wait_until(self._find_pid1, 30, "the container's PID 1")
        # Booted: the manager has finished its start-up job queue ("degraded": some unit
        # of the minimal root failed, which is not ours to judge here).
        wait_until(lambda: self.run("systemctl is-system-running", check=False).stdout.strip()
                   in ("running", "degraded"), boot_timeout_s, "the container to finish booting", 0.5)

    def _find_pid1(self):
        if self.nspawn.poll() is not None:
            raise RuntimeError(f"systemd-nspawn exited with {self.nspawn.returncode}; see {self.log_path}")
        for task in os.listdir(f"/proc/{self.nspawn.pid}/task"):
            with open(f"/proc/{self.nspawn.pid}/task/{task}/children") as f:
                for child in f.read().split():
                    try:
                        with open(f"/proc/{child}/status") as s:
                            nspid = [line.split()[1:] for line in s if line.startswith("NSpid:")][0]
                    except (OSError, IndexError):
                        continue
                    if nspid[-1] == "1":
                        return int(child)
        return None

    def _argv(self, command):
        return ["nsenter", "-t", str(self.pid1), "-a", "--", "/usr/bin/env", "-i", f"PATH={PATH}", "LANG=C.UTF-8",
                "HOME=/root", "SYSTEMD_PAGER=", "SYSTEMD_COLORS=0", "/bin/sh", "-c", command]

    def run(self, command, check=True, timeout=120, input=None):
        """Runs a shell command inside; returns the CompletedProcess (text)."""
        r = subprocess.run(self._argv(command), capture_output=True, text=True, timeout=timeout, input=input)
        if check and r.returncode != 0:
            raise AssertionError(f"inside the container: {command!r} exited {r.returncode}:\n{r.stdout}{r.stderr}")
        return r

    def popen(self, command):
        return subprocess.Popen(self._argv(command), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def write(self, path, text, mode="0644", owner="root:root"):
        """Writes a file inside through a temporary name and a rename, as an editor would."""
        q = shlex.quote(path)
        self.run(f"cat > {q}.new && chown {owner} {q}.new && chmod {mode} {q}.new && mv {q}.new {q}", input=text)

    def read(self, path):
        return self.run(f"cat {shlex.quote(path)}").stdout

    def close(self):
        if self.nspawn is not None and self.nspawn.poll() is None:
            # SIGTERM to nspawn asks the container's systemd to power off.
            self.nspawn.send_signal(signal.SIGTERM)
            try:
                self.nspawn.wait(timeout=60)
            except subprocess.TimeoutExpired:
                if self.pid1:
                    try:
                        os.kill(self.pid1, signal.SIGKILL)  # takes the whole PID namespace with it
                    except ProcessLookupError:
                        pass
                self.nspawn.kill()
                self.nspawn.wait(timeout=30)
        if self.merged and os.path.ismount(self.merged):
            subprocess.run(["umount", self.merged], check=False)
            if os.path.ismount(self.merged):
                subprocess.run(["umount", "--lazy", self.merged], check=False)
        if self.tmp and not (self.merged and os.path.ismount(self.merged)):
            subprocess.run(["rm", "-rf", "--one-file-system", self.tmp], check=False)
