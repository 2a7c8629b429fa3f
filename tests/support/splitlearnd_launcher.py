"""The one way the Python tests start the real splitlearnd.

A Splitlearnd writes its config (JSON, which YAML reads as is) into a folder of its
own, starts the binary named by SPLITLEARND_BIN with `--ready-file`, and waits for that
file to appear: the daemon writes it (through a rename) once it listens and its models
have settled, with the addresses it bound (docs/operations.md). Never the log: the log
is there for tests that check what the daemon says. A process that exits while
starting is reported at once, with its log. Only the process started here is ever
signalled, by its PID: SIGTERM, and SIGKILL only when it does not exit in time.

ctest sets the environment (tests/support/python_tests.cmake): SPLITLEARND_BIN,
SPLITLEARNCTL_BIN, SPLITLEARND_PY_STUBS (put on sys.path by this module, so that tests
import compute_pb2 and management_pb2), SPLITLEARND_SOURCE_DIR, and PYTHONPATH naming
this folder.
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.request

MIB = 1024 * 1024
SPLITLEARND_BIN = os.environ.get("SPLITLEARND_BIN")
SPLITLEARNCTL_BIN = os.environ.get("SPLITLEARNCTL_BIN")
STUBS_DIR = os.environ.get("SPLITLEARND_PY_STUBS")
SOURCE_DIR = os.environ.get("SPLITLEARND_SOURCE_DIR") or os.path.normpath(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

if STUBS_DIR and STUBS_DIR not in sys.path:
    sys.path.insert(0, STUBS_DIR)


class LaunchError(AssertionError):
    """splitlearnd did not start, reload or stop as expected; the message carries its log."""


def require(name):
    """The value of environment variable `name`, which ctest sets."""
    value = os.environ.get(name)
    if not value:
        raise RuntimeError(f"{name} is not set; run the tests through ctest (see tests/README.md)")
    return value


def wait_until(condition, timeout_s, what, interval_s=0.05):
    """Polls condition() until it returns something true, and returns that; fails after
    timeout_s. `what` says what was awaited (a string, or a function that makes one, so
    that a log is read only when needed)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what() if callable(what) else what}")
        time.sleep(interval_s)


def write_json(path, data):
    """Writes `data` to a file beside `path` and renames it over `path`, as editors and
    deployment tools do: a reader sees the old file or the new one, never half of one."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)


def model_entry(model_id, path, warmup_shape=None, *, warmup_runs=1, default=False, device="cpu", **extra):
    """One entry of the config's `models` list; `path` is relative to model_root.
    With warmup_shape, one float32 warmup input of that shape."""
    entry = {"id": model_id, "path": path, "device": device}
    if warmup_shape is not None:
        entry["warmup"] = {"inputs": [{"shape": list(warmup_shape), "dtype": "float32"}], "runs": warmup_runs}
    if default:
        entry["default"] = True
    entry.update(extra)
    return entry


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text):
    """{(name, frozenset of (label, value)): value} of a Prometheus text exposition;
    a line that is neither a comment nor a sample fails."""
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if not m:
            raise AssertionError(f"not a sample line: {line!r}")
        samples[(m.group(1), frozenset(_LABEL.findall(m.group(2) or "")))] = float(m.group(3))
    return samples


def metric_key(name, **labels):
    return (name, frozenset(labels.items()))


class Splitlearnd:
    """One splitlearnd process, started as often as a test likes (on the port of the
    config, or one given to start()).

    models:     the config's `models` list (model_entry()).
    workdir:    a folder for the models and files; by default a new temporary one
                (named after `prefix`), removed by close().
    name:       with several daemons in one workdir, each keeps its files in
                workdir/<name>: config.yaml, splitlearnd.log (appended to by every
                start), ready.json and manage.sock.
    server, devices: settings over the defaults below (loopback port 0, a management
                Unix socket, no file watching, drain of 10 s, one intra-op thread).
    model_root: the folder models are read from, relative to the daemon's folder
                (made if missing); default: workdir.
    env, wrapper: the process's environment, and a command it is run through (which
                must exec the daemon, so that the PID stays the daemon's).
    failed_ok:  how many configured models may fail to load at start; the others
                must serve.
    """

    def __init__(self, models=(), *, workdir=None, name=None, prefix="splitlearnd", server=None, devices=None,
                 model_root=None, env=None, wrapper=(), failed_ok=0):
        self._own_workdir = workdir is None
        self.workdir = workdir or tempfile.mkdtemp(prefix=f"splitlearnd-{prefix}-")
        self.dir = self.workdir if name is None else os.path.join(self.workdir, name)
        os.makedirs(self.dir, exist_ok=True)
        self.name = name or "splitlearnd"
        self.config_path = os.path.join(self.dir, "config.yaml")
        self.log_path = os.path.join(self.dir, "splitlearnd.log")
        self.ready_path = os.path.join(self.dir, "ready.json")
        root = self.workdir
        if model_root is not None:
            root = os.path.join(self.dir, model_root)
            os.makedirs(root, exist_ok=True)
        settings = {
            "listen": "127.0.0.1:0",
            "management_listen": "unix:" + os.path.join(self.dir, "manage.sock"),
            "drain_timeout_s": 10,
            "watch_config": False,
            "log_level": "info",
        }
        settings.update(server or {})
        self.config = {"server": settings, "model_root": root,
                       "devices": devices or {"cpu": {"intra_op_threads": 1}}, "models": list(models)}
        self.env = env
        self.wrapper = list(wrapper)
        self.failed_ok = failed_ok
        self.proc = None
        self.ready = None          # the ready file's object, once started
        self.starts = 0
        self.spawned_at = None     # time.monotonic() just before the process was started
        self.ready_seen_at = None  # time.monotonic() when its ready file was seen
        self._run_offset = 0       # where this run's lines begin in the log
        self._channels = {}
        self._own_channels = []
        self.write_config()

    # ---- config

    @property
    def model_root(self):
        return self.config["model_root"]

    def path(self, name):
        """A file in model_root."""
        return os.path.join(self.model_root, name)

    def write_config(self, config=None):
        """Writes self.config (or `config`, which becomes self.config) atomically."""
        if config is not None:
            self.config = config
        write_json(self.config_path, self.config)

    # ---- the process

    def command(self, listen=None):
        cmd = [require("SPLITLEARND_BIN"), "--config", self.config_path, "--log-format", "text",
               "--ready-file", self.ready_path]
        return cmd + (["--listen", listen] if listen else [])

    def start(self, listen=None, timeout_s=120):
        """Starts the daemon (with `listen`, --listen overrides server.listen) and waits
        for its ready file; returns self."""
        if self.alive():
            raise LaunchError(f"{self.name} is already running (pid {self.proc.pid})")
        expected = len(self.config["models"]) - self.failed_ok
        command = self.wrapper + self.command(listen)
        try:
            os.unlink(self.ready_path)  # a SIGKILLed daemon leaves its file behind
        except FileNotFoundError:
            pass
        self.starts += 1
        self.ready = None
        for channel in self._channels.values():  # connected to the previous process
            channel.close()
        self._channels.clear()
        with open(self.log_path, "ab") as log:
            log.write(f"---- start #{self.starts}: {' '.join(command)}\n".encode())
            log.flush()
            self._run_offset = log.tell()
            self.spawned_at = time.monotonic()
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=self.env)
        deadline = self.spawned_at + timeout_s
        while True:
            ready = self._read_ready()
            if ready is not None:
                break
            if self.proc.poll() is not None:
                raise LaunchError(f"{self.name} exited with status {self.proc.returncode} while starting; "
                                  f"log:\n{self.run_log()}")
            if time.monotonic() > deadline:
                self.kill()
                raise LaunchError(f"{self.name} was not ready after {timeout_s} s; log:\n{self.run_log()}")
            time.sleep(0.05)
        self.ready_seen_at = time.monotonic()
        if ready.get("pid") != self.proc.pid:
            self.kill()
            raise LaunchError(f"{self.name}: the ready file names pid {ready.get('pid')}, the process started is "
                              f"{self.proc.pid}")
        if ready.get("serving") != expected:
            self.kill()
            raise LaunchError(f"{self.name} is up with {ready.get('serving')} of {len(self.config['models'])} "
                              f"model(s) serving, expected {expected}; log:\n{self.run_log()}")
        self.ready = ready
        return self

    def _read_ready(self):
        try:
            with open(self.ready_path) as f:
                return json.load(f)
        except FileNotFoundError:
            return None

    @property
    def pid(self):
        return self.proc.pid

    @property
    def address(self):
        """The compute service's bound address, HOST:PORT."""
        return self.ready["listen"]

    @property
    def port(self):
        return int(self.address.rsplit(":", 1)[1])

    @property
    def management(self):
        """The management service's bound address (unix:PATH or HOST:PORT), or ""."""
        return self.ready["management"]

    @property
    def metrics_address(self):
        """HOST:PORT of /metrics, or "" (server.metrics_listen unset)."""
        return self.ready["metrics"]

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def send_signal(self, sig):
        os.kill(self.proc.pid, sig)

    def stop(self, timeout_s=60):
        """SIGTERM to the process started here, and its exit status (None: never started)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
                raise LaunchError(f"{self.name} did not exit within {timeout_s} s of SIGTERM; log:\n{self.run_log()}")
        return self.proc.returncode

    def shutdown(self, timeout_s=60):
        """The orderly end: fails unless the daemon ran until now and exits 0 on SIGTERM."""
        was_alive = self.alive()
        rc = self.stop(timeout_s)
        if not was_alive:
            raise LaunchError(f"{self.name} had died (exit status {rc}); log:\n{self.run_log()}")
        if rc != 0:
            raise LaunchError(f"{self.name} exited with status {rc} after SIGTERM, expected 0; log:\n{self.run_log()}")

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def close(self):
        """Kills the process if it still runs, closes channels, removes an own workdir."""
        self.kill()
        for channel in list(self._channels.values()) + self._own_channels:
            channel.close()
        self._channels.clear()
        self._own_channels.clear()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self):
        if not self.alive():
            self.start()
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None:
                self.shutdown()
        finally:
            self.close()

    # ---- the log (what the daemon says; waiting for it to start never reads it)

    def log(self):
        """The whole log, every start."""
        return self.log_since(0)

    def run_log(self):
        """The log of the latest start."""
        return self.log_since(self._run_offset)

    def log_size(self):
        """An offset for log_since() and wait_for_log(): what is written from now on."""
        try:
            return os.path.getsize(self.log_path)
        except FileNotFoundError:
            return 0

    def log_since(self, offset):
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for_log(self, pattern, after=None, timeout_s=60):
        """Waits for a line matching `pattern` in the log from offset `after` (default:
        the latest start), and returns the match."""
        regex = re.compile(pattern)
        start = self._run_offset if after is None else after
        return wait_until(lambda: regex.search(self.log_since(start)), timeout_s,
                          lambda: f"{pattern!r} in the log of {self.name}:\n{self.log_since(start)}")

    # ---- the management service and /metrics

    def channel(self, address, new=False):
        """A plaintext channel to `address`, closed by close(): one shared per address,
        or with `new` one of its own (a client of its own)."""
        import grpc
        if new:
            self._own_channels.append(grpc.insecure_channel(address))
            return self._own_channels[-1]
        if address not in self._channels:
            self._channels[address] = grpc.insecure_channel(address)
        return self._channels[address]

    def management_stub(self):
        import management_pb2_grpc
        return management_pb2_grpc.ManagementServiceStub(self.channel(self.management))

    def status(self, timeout_s=30):
        """GetStatus over the management socket."""
        import management_pb2
        return self.management_stub().GetStatus(management_pb2.GetStatusRequest(), timeout=timeout_s)

    def wait_for_reload(self, after, trigger=None, timeout_s=120):
        """Waits until the management service reports a reload other than `after` (a
        status().last_reload read before the reload was asked for), by `trigger` if
        given; returns its result."""
        def newer():
            last = self.status().last_reload
            return last if last != after and (trigger is None or trigger in last.trigger) else None
        return wait_until(newer, timeout_s, lambda: f"a reload ({trigger or 'any trigger'}) of {self.name}; "
                                                    f"log:\n{self.run_log()}")

    def reload(self, until=None, timeout_s=120):
        """SIGHUP, then waits: for `until()` when given (for daemons whose management
        service does not admit this process), else for the reload's result, which it
        returns."""
        if until is not None:
            self.send_signal(signal.SIGHUP)
            return wait_until(until, timeout_s, lambda: f"the reload of {self.name}; log:\n{self.run_log()}")
        before = self.status().last_reload
        self.send_signal(signal.SIGHUP)
        return self.wait_for_reload(before, "SIGHUP", timeout_s)

    def metrics(self, timeout_s=30):
        """One scrape of /metrics, parsed (parse_metrics)."""
        if not self.metrics_address:
            raise LaunchError(f"{self.name} serves no /metrics (server.metrics_listen is not set)")
        with urllib.request.urlopen(f"http://{self.metrics_address}/metrics", timeout=timeout_s) as r:
            if r.status != 200:
                raise AssertionError(f"/metrics answered HTTP {r.status}")
            return parse_metrics(r.read().decode())

    def metric(self, name, **labels):
        """One sample of a scrape, or None."""
        return self.metrics().get(metric_key(name, **labels))


class DaemonTestCase(unittest.TestCase):
    """One daemon for the whole test class. make_daemon(workdir) writes what it needs
    into the class's temporary folder and returns a Splitlearnd (not started), by
    default one serving the models make_models(workdir) writes;
    setUpClass starts it, tearDownClass fails unless it ran all along and exits 0 on
    SIGTERM. Nothing outlives the class, also when setUpClass fails half way."""

    daemon = None
    workdir = None

    @classmethod
    def make_models(cls, workdir):
        """Writes the model files into workdir and returns the config's models list."""
        raise NotImplementedError

    @classmethod
    def make_daemon(cls, workdir):
        """The class's daemon; by default one with the defaults that serves make_models()."""
        return Splitlearnd(cls.make_models(workdir), workdir=workdir)

    @classmethod
    def setUpClass(cls):
        cls.daemon = None
        cls.workdir = tempfile.mkdtemp(prefix=f"splitlearnd-{cls.__name__}-")
        cls.addClassCleanup(cls._cleanup)
        cls.daemon = cls.make_daemon(cls.workdir)
        cls.daemon.start()

    @classmethod
    def _cleanup(cls):
        if cls.daemon is not None:
            cls.daemon.close()
        shutil.rmtree(cls.workdir, ignore_errors=True)

    @classmethod
    def tearDownClass(cls):
        cls.daemon.shutdown()

    def assertDaemonAlive(self):
        if not self.daemon.alive():
            self.fail(f"splitlearnd is not running (exit status {self.daemon.proc.returncode}); log:\n"
                      f"{self.daemon.run_log()}")
