"""splitlearnd under a real, booted systemd (tests/README.md, docs/operations.md).

Boots a Debian root with systemd-nspawn (container.py), installs the build with
`cmake --install`, follows docs/operations.md sections 1-3, and then checks, each as a
step with one PASS or FAIL line, what only a real service manager shows:

  install   sections 1-3 word for word; the files, account and folders they promise
  start     `systemctl start` returns only after READY=1; a model that fails to load
            shows in the Status line while the others serve
  reload    `systemctl reload` under load: no failed call, the new config applied,
            RELOADING=1 and READY=1 received by the manager, the unit never inactive
  watchdog  a stopped daemon (SIGSTOP) is killed by the watchdog within WatchdogSec
            and Restart=on-failure brings it back serving
  sandbox   every feature under the unit's sandbox: TLS and tokens (read, and re-read
            on reload), training checkpoints, the management socket's peers, LoadModel
            by path, the config watcher, /metrics; no denied call or read-only path
  journal   `journalctl -u splitlearnd -o json`: priorities, model and request id
  stop      `systemctl stop` under load drains, writes the final checkpoint and ends
            with Result=success within TimeoutStopSec

  python3 tests/systemd/boot_test.py --root ROOT --build BUILD [--label NAME]

Needs root, systemd-nspawn and a root made by scripts/debian12-root.sh (or
scripts/debian13.sh with its build). Exit status 0 when every step passed.
"""
import argparse
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import yaml

from container import Container, wait_until

MODELS = "/var/lib/splitlearnd/models"
CONFIG = "/etc/splitlearnd/config.yaml"
# Messages that mean the sandbox took something away the daemon wanted.
DENIED = re.compile(r"Operation not permitted|Read-only file system|Permission denied|EPERM|EROFS|EACCES")


class StepFailed(AssertionError):
    pass


def check(condition, message):
    if not condition:
        raise StepFailed(message)


class BootTest:
    def __init__(self, container, repo, build, label):
        self.c, self.repo, self.build, self.label = container, repo, build, label
        self.client_opts = ""  # TLS and token once the sandbox step turned them on
        self.failed = []

    # ------------------------------------------------------------ helpers

    def sh(self, command, **kw):
        return self.c.run(command, **kw)

    def show(self, *props):
        out = self.sh("systemctl show splitlearnd " + " ".join(f"-p {p}" for p in props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def status(self):
        r = self.sh("splitlearnctl --json status", check=False)
        # 3: the last reload failed (a model of it did not load); the status is there all the same.
        check(r.returncode in (0, 3), f"splitlearnctl status exited {r.returncode}: {r.stderr}")
        return json.loads(r.stdout)

    def model(self, st, model_id):
        return next((m for m in st["models"] if m["id"] == model_id), None)

    def requests(self, model_id):
        m = self.model(self.status(), model_id)
        return int(m["requests"]) if m else 0

    def client_command(self, args):
        env = (f"PYTHONDONTWRITEBYTECODE=1 PYTHONPATH={self.repo}/client/python "
               f"SPLITLEARND_PY_STUBS={self.build}/python")
        command, _, rest = args.partition(" ")  # options given here come last, so they win
        return f"{env} python3 {self.repo}/tests/systemd/client.py {command} {self.client_opts} {rest}"

    def client(self, args, timeout=300):
        r = self.sh(self.client_command(args), check=False, timeout=timeout)
        check(r.returncode == 0, f"client {args!r} exited {r.returncode}: {r.stderr[-2000:]}")
        return json.loads(r.stdout.strip().splitlines()[-1])

    def expect_call(self, code, model, extra="", what=""):
        r = self.client(f"call --model {model} {extra}")
        check(r["code"] == code, f"{what}: {r['code']} {r['details']!r}")

    def journal(self, args=""):
        out = self.sh(f"journalctl -o json --no-pager {args}", timeout=120).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def daemon_entries(self, args=""):
        """The daemon's own lines (not the manager's about the unit)."""
        return [e for e in self.journal("-u splitlearnd " + args) if e.get("SYSLOG_IDENTIFIER") == "splitlearnd"]

    def daemon_entries_since(self, since):
        return [e for e in self.daemon_entries(f"--since @{int(since) - 1}")
                if int(e["__REALTIME_TIMESTAMP"]) / 1e6 >= since]

    def manager_entries(self, since):
        return [e for e in self.journal("_PID=1") if e.get("UNIT") == "splitlearnd.service"
                and int(e["__REALTIME_TIMESTAMP"]) / 1e6 >= since]

    def edit_config(self, change):
        """Edits /etc/splitlearnd/config.yaml as an operator would: read, change, save."""
        config = yaml.safe_load(self.c.read(CONFIG))
        change(config)
        self.c.write(CONFIG, yaml.safe_dump(config, sort_keys=False))

    def wait_reload(self, since, timeout_s=120):
        """The daemon's last reload once it is one that finished after `since`."""
        def done():
            last = self.status().get("last_reload") or {}
            return last if int(last.get("time_unix_ms") or 0) / 1000 >= since else None
        return wait_until(done, timeout_s, "a reload to finish", 0.2)

    def denied_lines(self):
        return [e["MESSAGE"] for e in self.daemon_entries() if isinstance(e.get("MESSAGE"), str)
                and DENIED.search(e["MESSAGE"])]

    def run_step(self, name, fn):
        t0 = time.monotonic()
        try:
            detail = fn()
            print(f"[{self.label}] PASS {name} ({time.monotonic() - t0:.0f} s): {detail}", flush=True)
        except Exception as e:  # one step's failure must not hide the others' results
            self.failed.append(name)
            print(f"[{self.label}] FAIL {name} ({time.monotonic() - t0:.0f} s): {type(e).__name__}: {e}", flush=True)
            r = self.sh("journalctl -u splitlearnd --no-pager -n 30", check=False)
            print("  last journal lines of the unit:\n  " + r.stdout.replace("\n", "\n  "), flush=True)

    # ------------------------------------------------------------ steps

    def step_install(self):
        """docs/operations.md sections 1-3, in its own words."""
        self.sh(f"cd {self.repo} && cmake --install {self.build}", timeout=300)
        self.sh("systemd-sysusers && systemd-tmpfiles --create && systemctl daemon-reload")
        for path in ("/usr/local/bin/splitlearnd", "/usr/local/bin/splitlearnctl",
                     "/usr/local/lib/systemd/system/splitlearnd.service", "/usr/local/lib/sysusers.d/splitlearnd.conf",
                     "/usr/local/lib/tmpfiles.d/splitlearnd.conf", CONFIG):
            check(self.sh(f"test -f {path}", check=False).returncode == 0, f"{path} was not installed")
        check(self.sh("id splitlearnd", check=False).returncode == 0, "systemd-sysusers made no splitlearnd user")
        owner = self.sh(f"stat -c '%a %U %G' {MODELS}").stdout.strip()
        check(owner == "750 root splitlearnd", f"{MODELS} is '{owner}', docs: 0750 root:splitlearnd")

        self.sh(f"splitlearnd make-demo-shard {MODELS}/demo-trunk.pt")
        r = self.sh(f"splitlearnd --check-config {CONFIG}")
        check(f"{CONFIG}: OK (1 model(s))" in r.stdout, f"--check-config said {r.stdout!r}")
        self.sh("systemctl enable --now splitlearnd", timeout=600)
        r = self.sh("systemctl status splitlearnd", check=False)
        expected = ("Status: \"1 model(s) ready; listening on 0.0.0.0:50051, "
                    "management on unix:/run/splitlearnd/manage.sock\"")
        check(r.returncode == 0 and expected in r.stdout, f"systemctl status:\n{r.stdout}")
        self.expect_call("OK", "demo-trunk", what="a call to demo-trunk failed")
        return "cmake --install, sysusers, tmpfiles, make-demo-shard, --check-config OK, enable --now; " + expected

    def security_score(self):
        """The running unit's score, and the installed file's alone (--offline)."""
        scores = []
        for command in ("systemd-analyze security splitlearnd.service",
                        "systemd-analyze security --offline=yes /usr/local/lib/systemd/system/splitlearnd.service"):
            r = self.sh(command, check=False)
            m = re.search(r"Overall exposure level for splitlearnd\.service: ([0-9.]+) (\S+)", r.stdout)
            check(m, f"{command} said:\n{r.stdout}{r.stderr}")
            print(f"[{self.label}] {command}: {m.group(1)} {m.group(2)}", flush=True)
            check(float(m.group(1)) <= 1.5, f"{command}: exposure {m.group(1)} is above 1.5")
            scores.append(f"{m.group(1)} {m.group(2)}")
        return f"{scores[0]} (running), {scores[1]} (--offline)"

    def step_start(self):
        # The models of the remaining steps: a file that is not TorchScript, and a small
        # trunk that trains with a checkpoint in a folder of the daemon's own (section 9).
        self.sh(f"printf 'not a TorchScript file\\n' > {MODELS}/broken.pt")
        self.sh(f"splitlearnd make-demo-shard {MODELS}/trainer.pt --kind tiny --hidden 64")
        self.sh(f"install -d -o splitlearnd -g splitlearnd -m 0750 {MODELS}/checkpoints")

        def change(config):
            config["server"]["watch_config"] = False  # each reload is the one a step triggers
            config["models"].append({"id": "broken", "path": "broken.pt", "device": "cpu"})
            config["models"].append({"id": "trainer", "path": "trainer.pt", "device": "cpu", "training": {
                "enabled": True, "optimizer": "sgd", "learning_rate": 0.001,
                "checkpoint_path": "checkpoints/trainer.pt"}})
        self.sh("systemctl stop splitlearnd", timeout=120)
        self.edit_config(change)
        # The manager stamps the moment it got READY=1 (the unit turned active) on
        # CLOCK_MONOTONIC, which the container shares with this process.
        t0 = time.monotonic()
        self.sh("systemctl start splitlearnd", timeout=600)
        returned = time.monotonic()
        props = self.show("ActiveState", "SubState", "StatusText", "MainPID", "ActiveEnterTimestampMonotonic")
        check(props["ActiveState"] == "active" and props["SubState"] == "running",
              f"right after systemctl start: {props}")
        ready_at = int(props["ActiveEnterTimestampMonotonic"]) / 1e6
        check(t0 <= ready_at <= returned,
              f"READY=1 at {ready_at:.3f}, start ran {t0:.3f}..{returned:.3f}: start returned before READY=1")
        # Every model had settled by then: none is still LOADING.
        states = {m["id"]: m["state"] for m in self.status()["models"]}
        check(states == {"demo-trunk": "READY", "broken": "FAILED", "trainer": "READY"},
              f"model states right after start: {states}")
        status_text = props["StatusText"]
        check("2 model(s) ready" in status_text and "1 failed" in status_text and "broken" in status_text,
              f"Status line does not show the failed model: {status_text!r}")
        r = self.sh("systemctl status splitlearnd", check=False)
        check(f"Status: \"{status_text}\"" in r.stdout, f"systemctl status shows no Status line:\n{r.stdout}")
        self.expect_call("OK", "demo-trunk", what="demo-trunk does not serve")
        self.expect_call("OK", "trainer", "--shape 2x64", what="trainer does not serve")
        return (f"start took {returned - t0:.1f} s and returned {returned - ready_at:.2f} s after the manager got "
                f"READY=1; Status: {status_text!r}; demo-trunk and trainer serve")

    def step_reload(self):
        self.sh(f"cp {MODELS}/demo-trunk.pt {MODELS}/second.pt")
        stop_file = "/tmp/stop-reload-load"
        self.sh(f"rm -f {stop_file}")
        before = self.requests("demo-trunk")
        load = self.c.popen(self.client_command(f"load --model demo-trunk --concurrency 4 --stop-file {stop_file} "
                                                f"--max-s 300"))
        states, sampling = set(), threading.Event()

        def sample():
            while not sampling.is_set():
                states.add(self.show("ActiveState")["ActiveState"])
        try:
            wait_until(lambda: self.requests("demo-trunk") >= before + 8, 60, "load on demo-trunk", 0.2)
            self.sh("systemctl log-level debug")  # the manager then logs each notification it gets
            sampler = threading.Thread(target=sample)
            sampler.start()
            try:
                def change(config):  # add one, remove the broken one, change one in place
                    config["models"] = [m for m in config["models"] if m["id"] != "broken"]
                    config["models"].append({"id": "second", "path": "second.pt", "device": "cpu"})
                    config["models"][0]["timeout_ms"] = 20000
                self.edit_config(change)
                main_pid = self.show("MainPID")["MainPID"]
                t_reload = time.time()
                self.sh("systemctl reload splitlearnd")
                last = self.wait_reload(t_reload)
                mid = self.requests("demo-trunk")
                wait_until(lambda: self.requests("demo-trunk") >= mid + 8, 60, "load after the reload", 0.2)
            finally:
                sampling.set()
                sampler.join()
                self.sh("systemctl log-level info", check=False)
        finally:
            self.sh(f"touch {stop_file}", check=False)
            out, err = load.communicate(timeout=120)
        check(load.returncode == 0, f"load client failed: {err[-2000:]}")
        counts = json.loads(out.strip().splitlines()[-1])["counts"]
        check(set(counts) == {"OK"} and counts["OK"] > 0, f"calls during the reload: {counts}")
        check(last["trigger"] == "SIGHUP" and last["ok"] and last["added"] == ["second"]
              and last["removed"] == ["broken"] and last["updated"] == ["demo-trunk"],
              f"the reload was not the one systemctl reload sent, or failed: {last}")
        st = self.status()
        check(self.model(st, "second")["state"] == "READY", "the added model is not READY")
        check(int(self.model(st, "demo-trunk")["timeout_ms"]) == 20000, "demo-trunk's new timeout is not applied")
        notes = [e["MESSAGE"] for e in self.manager_entries(t_reload)
                 if f"Got notification message from PID {main_pid}" in str(e.get("MESSAGE"))]
        reloading = [i for i, n in enumerate(notes) if "RELOADING=1" in n]
        check(reloading and any("READY=1" in n for n in notes[reloading[0]:]),
              f"the manager did not get RELOADING=1 then READY=1: {notes}")
        check(states <= {"active", "reloading"}, f"ActiveState during the reload: {sorted(states)}")
        return (f"{counts['OK']} calls, 0 failed; reload by SIGHUP added 'second', removed 'broken', changed "
                f"timeout_ms in place; the manager "
                f"got RELOADING=1 then READY=1; ActiveState seen: {', '.join(sorted(states))}")

    def step_watchdog(self):
        props = self.show("MainPID", "NRestarts", "WatchdogUSec")
        old_pid, restarts = props["MainPID"], int(props["NRestarts"])
        watchdog_s = parse_duration(props["WatchdogUSec"])
        t_stop = time.time()
        self.sh(f"kill -STOP {old_pid}")

        def back():
            p = self.show("ActiveState", "MainPID", "NRestarts")
            return p if (p["ActiveState"] == "active" and p["MainPID"] not in ("0", old_pid)
                         and int(p["NRestarts"]) > restarts) else None
        # Timeout, then the abort (TimeoutAbortSec, which defaults to TimeoutStopSec), RestartSec and a start.
        p = wait_until(back, watchdog_s + 60 + 5 + 120, "the watchdog restart", 0.5)
        back_at = time.time()
        timeouts = [e for e in self.manager_entries(t_stop) if "Watchdog timeout" in str(e.get("MESSAGE"))]
        check(timeouts, "the manager logged no watchdog timeout")
        fired = int(timeouts[0]["__REALTIME_TIMESTAMP"]) / 1e6 - t_stop
        check(fired <= watchdog_s + 1, f"the watchdog fired {fired:.1f} s after the stop (WatchdogSec={watchdog_s:g})")
        results = [e["MESSAGE"] for e in self.manager_entries(t_stop) if "Failed with result" in str(e.get("MESSAGE"))]
        check(any("'watchdog'" in m for m in results), f"the unit's failure was not the watchdog: {results}")
        self.expect_call("OK", "demo-trunk", what="demo-trunk does not serve after the restart")
        return (f"SIGSTOP of PID {old_pid}: watchdog fired after {fired:.1f} s (WatchdogSec={watchdog_s:g}), "
                f"restarted as PID {p['MainPID']} (NRestarts={p['NRestarts']}) and serving "
                f"{back_at - t_stop:.0f} s after the stop")

    def step_sandbox(self):
        done = []
        kmsg_before = seccomp_kernel_lines()
        # TLS and tokens, installed as docs/security.md says, then a restart (TLS on).
        self.sh(PKI_SCRIPT, timeout=120)
        self.install_tls_and_tokens(1)

        def change(config):
            config["server"]["watch_config"] = True
            config["server"]["metrics_listen"] = "127.0.0.1:9464"
            config["server"]["tls"] = {"cert_file": "/etc/splitlearnd/tls/server.pem",
                                       "key_file": "/etc/splitlearnd/tls/server.key"}
            config["server"]["auth"] = {"token_file": "/etc/splitlearnd/tokens"}
        self.edit_config(change)
        self.sh("systemctl restart splitlearnd", timeout=600)
        old = "--ca /root/pki/ca-1.pem --token-file /root/client/token-1"
        self.expect_call("OK", "demo-trunk", old, what="a TLS call with a token failed")
        self.expect_call("UNAUTHENTICATED", "demo-trunk", "--ca /root/pki/ca-1.pem",
                         what="a call without a token passed")
        self.expect_call("UNAVAILABLE", "demo-trunk", what="a plaintext call to the TLS port did not fail")
        self.client_opts = old
        done.append("TLS and token read")

        metrics = self.sh("python3 -c \"import urllib.request; print(urllib.request.urlopen("
                          "'http://127.0.0.1:9464/metrics', timeout=10).read().decode())\"", timeout=60)
        check("splitlearnd_" in metrics.stdout, "/metrics has no splitlearnd_ series")
        done.append("/metrics")

        # Training writes its checkpoint into the daemon's folder under the StateDirectory.
        check(self.client("train --model trainer --shape 2x64 --steps 3")["steps"] == 3, "training failed")
        t = time.time()
        self.sh("splitlearnctl reload trainer", timeout=300)
        owner = self.sh(f"stat -c '%U' {MODELS}/checkpoints/trainer.pt", check=False).stdout.strip()
        check(owner == "splitlearnd", f"checkpoint {MODELS}/checkpoints/trainer.pt: owner {owner!r}")
        check(any("resumes from checkpoint" in str(e.get("MESSAGE")) for e in self.daemon_entries_since(t)),
              "the new version of trainer did not resume from the checkpoint")
        done.append("checkpoint written and resumed")

        # Rotation: new certificate (another CA) and a new token file, then systemctl reload.
        self.install_tls_and_tokens(2)
        t = time.time()
        self.sh("systemctl reload splitlearnd")
        last = self.wait_reload(t)
        check(last["ok"] and last["trigger"] == "SIGHUP", f"the rotation reload: {last}")
        new = "--ca /root/pki/ca-2.pem --token-file /root/client/token-2"
        seen = []
        try:
            wait_until(lambda: seen.append(self.client(f"call --model demo-trunk {new}")) or seen[-1]["code"] == "OK",
                       30, "the new certificate and token to serve", 0.5)
        except TimeoutError as e:
            served = self.sh("openssl s_client -connect 127.0.0.1:50051 </dev/null 2>/dev/null | grep '^issuer='",
                             check=False, timeout=30).stdout.strip()
            raise StepFailed(f"{e}; the last call: {seen[-1:]}; the daemon serves a certificate of {served!r}")
        self.expect_call("UNAUTHENTICATED", "demo-trunk", "--ca /root/pki/ca-2.pem --token-file /root/client/token-1",
                         what="the old token still works after the rotation")
        self.expect_call("UNAVAILABLE", "demo-trunk", "--ca /root/pki/ca-1.pem --token-file /root/client/token-2",
                         what="the old certificate is still served after the rotation")
        self.client_opts = new
        done.append("certificate and token re-read on reload")

        # The management socket: a member of the daemon's group with it as effective group
        # (sg, docs/security.md) gets in; the same user without it is refused by the
        # daemon; another user is refused by the socket's folder.
        self.sh("useradd --no-create-home --groups splitlearnd operator1 && useradd --no-create-home outsider1")
        r = self.sh("runuser -u operator1 -- sg splitlearnd -c 'splitlearnctl status'", check=False)
        check(r.returncode == 0 and "demo-trunk" in r.stdout, f"sg splitlearnd as a group member: {r.stderr}")
        t = time.time()
        r = self.sh("runuser -u operator1 -- splitlearnctl status", check=False)
        check(r.returncode != 0, "a group member without sg got in (docs say uid 65534 is refused)")
        wait_until(lambda: any("refused a connection from uid 65534" in str(e.get("MESSAGE"))
                               for e in self.daemon_entries_since(t)), 10,
                   "the refusal naming uid 65534 in the journal", 0.2)
        r = self.sh("runuser -u outsider1 -- splitlearnctl status", check=False)
        check(r.returncode != 0, "a user outside the group got into the management socket")
        done.append("management socket: group member in (sg), others refused")

        # LoadModel by path under model_root; a path out of it is refused.
        self.sh(f"cp {MODELS}/demo-trunk.pt {MODELS}/extra.pt")
        self.sh("splitlearnctl load --path extra.pt", timeout=300)
        self.expect_call("OK", "extra", what="the model loaded by path does not serve")
        r = self.sh("splitlearnctl load --path ../../../../etc/passwd --id escape", check=False)
        check(r.returncode != 0, "a path outside model_root was loaded")
        done.append("LoadModel by path (and a path outside refused)")

        # The config watcher (inotify) under the sandbox.
        t = time.time()
        self.edit_config(lambda config: config["models"][0].update(timeout_ms=25000))
        last = self.wait_reload(t)
        check(last["trigger"] == "file change" and last["ok"], f"the save did not reload: {last}")
        check(int(self.model(self.status(), "demo-trunk")["timeout_ms"]) == 25000, "the saved change is not applied")
        done.append("config watcher")

        # The daemon cannot change the code it runs: StateDirectory= left model_root alone.
        owner = self.sh(f"stat -c '%a %U %G' {MODELS} {MODELS}/demo-trunk.pt").stdout.split("\n")
        check(owner[:2] == ["750 root splitlearnd", "644 root root"], f"model_root ownership: {owner}")

        denied = self.denied_lines()
        check(not denied, "the daemon logged denied calls or read-only paths:\n" + "\n".join(denied))
        kernel = seccomp_kernel_lines()[len(kmsg_before):] if kmsg_before is not None else []
        check(not kernel, "the kernel logged seccomp actions for splitlearnd:\n" + "\n".join(kernel))
        done.append("no denied call or read-only path logged")
        return "; ".join(done)

    def install_tls_and_tokens(self, n):
        self.sh(f"""set -e
            install -d -m 0755 /etc/splitlearnd/tls
            cd /etc/splitlearnd/tls
            install -m 0644 /root/pki/server-{n}.pem server.pem.new && mv server.pem.new server.pem
            install -m 0600 -o splitlearnd /root/pki/server-{n}.key server.key.new && mv server.key.new server.key
            install -d -m 0700 /root/client
            openssl rand -hex 32 > /root/client/token-{n}
            printf 'client-{n} compute %s\\n' "$(cat /root/client/token-{n})" > /etc/splitlearnd/tokens.new
            chown splitlearnd /etc/splitlearnd/tokens.new && chmod 0600 /etc/splitlearnd/tokens.new
            mv /etc/splitlearnd/tokens.new /etc/splitlearnd/tokens""")

    def step_journal(self):
        t = time.time()
        self.sh("splitlearnctl log-level debug")
        self.expect_call("OK", "demo-trunk", "--request-id 4242", what="the call with a request id failed")
        pattern = re.compile(r"^request s\d+ \(client id 4242\) model=demo-trunk: OK")
        wait_until(lambda: any(pattern.match(str(e.get("MESSAGE"))) for e in self.daemon_entries_since(t)),
                   10, "the request's debug line", 0.2)
        self.sh("splitlearnctl log-level info")
        entries = self.daemon_entries()
        messages = {}
        for e in entries:
            check("PRIORITY" in e and isinstance(e.get("MESSAGE"), str), f"an entry without PRIORITY or text: {e}")
            check(not re.match(r"^(<\d>|\d{4}-\d\d-\d\d)", e["MESSAGE"]), f"a prefix in MESSAGE: {e['MESSAGE']!r}")
            messages.setdefault(e["PRIORITY"], []).append(e["MESSAGE"])

        def has(priority, regex, what):
            check(any(re.search(regex, m) for m in messages.get(priority, [])),
                  f"no {what} at PRIORITY={priority}")
        has("6", r"^model 'demo-trunk' READY \(version \d+, cpu\)$", "model READY line")
        has("3", r"broken", "error naming the model that failed")
        has("4", r"refused a connection from uid 65534", "warning of a refused management peer")
        has("7", pattern.pattern, "per-request line with the request id and model")
        warn = self.journal("-u splitlearnd -p warning")
        check(warn and all(int(e["PRIORITY"]) <= 4 for e in warn), "journalctl -p warning does not filter")
        return (f"{len(entries)} daemon entries, all with PRIORITY and a bare MESSAGE; READY at 6, "
                f"the failed model at 3, "
                f"the refused peer at 4, 'request sN (client id 4242) model=demo-trunk: OK' at 7; -p warning filters")

    def step_stop(self):
        check(self.client("train --model trainer --shape 2x64 --steps 3")["steps"] == 3, "training failed")
        ckpt = f"{MODELS}/checkpoints/trainer.pt"
        mtime_before = float(self.sh(f"stat -c %.Y {ckpt}").stdout)
        stop_file = "/tmp/stop-stop-load"
        self.sh(f"rm -f {stop_file}")
        before = self.requests("demo-trunk")
        # Large inputs, so that calls are in flight when SIGTERM comes.
        load = self.c.popen(self.client_command(f"load --model demo-trunk --concurrency 4 --shape 8x64x768 "
                                                f"--stop-file {stop_file} --max-s 300"))
        try:
            wait_until(lambda: self.requests("demo-trunk") >= before + 4, 120, "load on demo-trunk", 0.2)
            timeout_stop = parse_duration(self.show("TimeoutStopUSec")["TimeoutStopUSec"])
            t0 = time.time()
            self.sh("systemctl stop splitlearnd", timeout=300)
            t1 = time.time()
        finally:
            self.sh(f"touch {stop_file}", check=False)
            out, err = load.communicate(timeout=120)
        check(load.returncode == 0, f"load client failed: {err[-2000:]}")
        calls = json.loads(out.strip().splitlines()[-1])["calls"]
        props = self.show("ActiveState", "Result", "ExecMainCode", "ExecMainStatus")
        check(props["ActiveState"] == "inactive" and props["Result"] == "success" and props["ExecMainStatus"] == "0",
              f"after systemctl stop: {props}")
        check(t1 - t0 < timeout_stop, f"stop took {t1 - t0:.1f} s, TimeoutStopSec={timeout_stop:g}")

        log = self.daemon_entries_since(t0)
        sigterm = [int(e["__REALTIME_TIMESTAMP"]) / 1e6 for e in log if e["MESSAGE"].startswith("SIGTERM: draining")]
        check(sigterm, "no 'SIGTERM: draining' line")
        messages = [e["MESSAGE"] for e in log]
        timeline = [(round(int(e["__REALTIME_TIMESTAMP"]) / 1e6 - t0, 3), e["MESSAGE"]) for e in log]

        # A call in flight at SIGTERM finishes (or, not yet past the gate, is refused
        # with UNAVAILABLE). A later one never runs: UNAVAILABLE, or CANCELLED when it
        # meets the gRPC server closing its connections (section 8).
        in_flight = [c for c in calls if c[0] < sigterm[0]]
        later = [c for c in calls if c[0] >= sigterm[0]]
        bad = ([c for c in in_flight if c[2] not in ("OK", "UNAVAILABLE")] +
               [c for c in later if c[2] not in ("UNAVAILABLE", "CANCELLED")])
        check(not bad, f"{len(bad)} call(s) ended otherwise, e.g. (start, end after systemctl stop, code, details) "
                       f"{[(round(c[0] - t0, 3), round(c[1] - t0, 3), c[2], c[3]) for c in bad[:3]]}; "
                       f"the daemon's lines: {timeline}")
        finished_in_drain = [c for c in in_flight if c[2] == "OK" and c[1] > sigterm[0]]
        check(finished_in_drain, "no call was in flight when SIGTERM came (the load was too light)")
        check(not any(m.startswith("drain timeout") for m in messages), "calls were cancelled at the drain timeout")
        check(any(m.startswith(f"model 'trainer': checkpoint written to {ckpt}") for m in messages),
              "no final checkpoint line for trainer")
        check(float(self.sh(f"stat -c %.Y {ckpt}").stdout) > mtime_before, "the checkpoint file was not rewritten")
        check(messages[-1] == "stopped", f"the daemon's last line is {messages[-1]!r}, not 'stopped'")
        counts = {}
        for c in calls:
            counts[c[2]] = counts.get(c[2], 0) + 1
        return (f"stop took {t1 - t0:.1f} s (TimeoutStopSec={timeout_stop:g}); {len(finished_in_drain)} call(s) in "
                f"flight at SIGTERM finished OK during the drain, {len(later)} sent later refused "
                f"(all calls: {counts}); final checkpoint written; Result=success, status 0")

    def run(self):
        self.run_step("install", self.step_install)
        if self.failed:
            return False
        self.run_step("security", self.security_score)
        for name in ("start", "reload", "watchdog", "sandbox", "journal", "stop"):
            self.run_step(name, getattr(self, "step_" + name))
        return not self.failed


# Two CAs, each with a server certificate for localhost; the second is the rotation's.
PKI_SCRIPT = """set -e
mkdir -p /root/pki && cd /root/pki
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\n' > san.ext
for n in 1 2; do
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
      -subj "/CN=splitlearnd test CA $n" -keyout ca-$n.key -out ca-$n.pem 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=localhost \
      -keyout server-$n.key -out server-$n.csr 2>/dev/null
  openssl x509 -req -in server-$n.csr -CA ca-$n.pem -CAkey ca-$n.key -CAcreateserial -days 2 \
      -extfile san.ext -out server-$n.pem 2>/dev/null
done"""


def parse_duration(text):
    """systemctl show's durations: '30s', '1min', '1min 30s', '500ms'."""
    units = {"us": 1e-6, "ms": 1e-3, "s": 1, "min": 60, "h": 3600}
    total = 0.0
    for value, unit in re.findall(r"([0-9.]+)(us|ms|min|s|h)", text):
        total += float(value) * units[unit]
    return total


def seccomp_kernel_lines():
    """The kernel's audit lines about seccomp actions taken on splitlearnd (None: unreadable)."""
    r = subprocess.run(["dmesg"], capture_output=True, text=True)
    if r.returncode != 0:
        return None
    return [line for line in r.stdout.splitlines() if "type=1326" in line and "splitlearnd" in line]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", required=True, help="the Debian root to boot (not written: an overlay is booted)")
    p.add_argument("--build", required=True, help="the build folder to install (cmake --install)")
    p.add_argument("--label", default="", help="prefix of the PASS/FAIL lines")
    p.add_argument("--log", help="systemd-nspawn's console output (default: BUILD/systemd-boot.log)")
    args = p.parse_args()
    repo = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
    build = os.path.abspath(args.build)
    label = args.label or os.path.basename(args.root)
    # A CI timeout's SIGTERM must still power the container off and unmount (finally: below).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    container = Container(args.root, repo, build, args.log or os.path.join(build, "systemd-boot.log"))
    t0 = time.monotonic()
    try:
        container.start()
        print(f"[{label}] booted {args.root} in {time.monotonic() - t0:.0f} s", flush=True)
        ok = BootTest(container, repo, build, label).run()
    finally:
        container.close()
    print(f"[{label}] {'all steps passed' if ok else 'FAILED'} in {time.monotonic() - t0:.0f} s", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
