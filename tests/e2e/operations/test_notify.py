"""systemd's notification protocol.

The test plays systemd: it binds a Unix datagram socket, starts splitlearnd with
NOTIFY_SOCKET pointing at it and a watchdog (WATCHDOG_USEC, and WATCHDOG_PID set to
the daemon's own PID by an exec'ing shell), and reads what arrives: READY=1 once it
listens and its models are warm, WATCHDOG=1 pings, RELOADING=1 then READY=1 around
each reload (a good one and a refused one, whose error goes to STATUS=), and
STOPPING=1 on SIGTERM.
"""
import os
import signal
import socket
import threading
import time
import unittest

from ops_fixture import Daemon, model_entry, wait_until, write_add_model

WATCHDOG_USEC = 600000  # the daemon pings every 300 ms


class NotifyListener:
    def __init__(self, path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(0.2)
        self.messages = []  # (monotonic time, {key: value})
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            fields = dict(line.split("=", 1) for line in data.decode().split("\n") if "=" in line)
            with self._lock:
                self.messages.append((time.monotonic(), fields))

    def snapshot(self):
        with self._lock:
            return list(self.messages)

    def index_of(self, key, after=-1, value="1"):
        for i, (_, m) in enumerate(self.snapshot()):
            if i > after and m.get(key) == value:
                return i
        return None

    def wait_for(self, key, after=-1, timeout_s=60):
        return wait_until(lambda: self.index_of(key, after), timeout_s, f"{key}=1 after message {after}")

    def close(self):
        self._stop.set()
        self._thread.join()
        self.sock.close()


class SystemdNotifications(unittest.TestCase):
    def test_ready_watchdog_reloading_stopping(self):
        d = Daemon([model_entry("m", "m.pt")], prefix="notify")
        self.addCleanup(d.close)
        write_add_model(d.path("m.pt"), 1)
        listener = NotifyListener(os.path.join(d.dir, "notify.sock"))
        self.addCleanup(listener.close)
        d.env = dict(os.environ, NOTIFY_SOCKET=listener.path, WATCHDOG_USEC=str(WATCHDOG_USEC))
        # WATCHDOG_PID must be the daemon's PID: a shell exports its own and execs.
        d.wrapper = ["/bin/sh", "-c", 'WATCHDOG_PID=$$; export WATCHDOG_PID; exec "$@"', "sh"]
        d.start()

        ready = listener.wait_for("READY")
        first = listener.snapshot()[ready][1]
        self.assertIn("model(s) ready", first.get("STATUS", ""))
        self.assertIn("1 model(s) ready", first["STATUS"])

        # Watchdog pings while every device worker is alive.
        wait_until(lambda: sum(1 for _, m in listener.snapshot() if m.get("WATCHDOG") == "1") >= 3, 30,
                   "three WATCHDOG=1 pings")

        # A good reload: RELOADING=1 (with the monotonic time systemd wants), then READY=1.
        d.send_signal(signal.SIGHUP)
        reloading = listener.wait_for("RELOADING", after=ready)
        self.assertIn("MONOTONIC_USEC", listener.snapshot()[reloading][1])
        reloaded = listener.wait_for("READY", after=reloading)
        self.assertIn("reloaded", listener.snapshot()[reloaded][1].get("STATUS", ""))

        # A refused reload: the same pair, and the error in STATUS=.
        with open(d.config_path, "w") as f:
            f.write("models: {not: [a list\n")
        d.send_signal(signal.SIGHUP)
        reloading2 = listener.wait_for("RELOADING", after=reloaded)
        refused = listener.wait_for("READY", after=reloading2)
        status = listener.snapshot()[refused][1].get("STATUS", "")
        self.assertIn("reload failed", status)
        self.assertIn("config.yaml", status)
        self.assertTrue(d.alive())

        pings_before = sum(1 for _, m in listener.snapshot() if m.get("WATCHDOG") == "1")
        wait_until(lambda: sum(1 for _, m in listener.snapshot() if m.get("WATCHDOG") == "1") > pings_before, 30,
                   "pings after the refused reload")

        d.send_signal(signal.SIGTERM)
        stopping = listener.wait_for("STOPPING", after=refused)
        self.assertEqual(d.proc.wait(timeout=60), 0, d.log())
        self.assertIn("draining", listener.snapshot()[stopping][1].get("STATUS", ""))

        kinds = [k for _, m in listener.snapshot() for k in ("READY", "RELOADING", "STOPPING") if m.get(k) == "1"]
        self.assertEqual(kinds, ["READY", "RELOADING", "READY", "RELOADING", "READY", "STOPPING"])
        pings = sum(1 for _, m in listener.snapshot() if m.get("WATCHDOG") == "1")
        print(f"\nnotifications: {' -> '.join(kinds)}; {pings} WATCHDOG=1 pings; refused reload STATUS={status!r}")


if __name__ == "__main__":
    unittest.main()
