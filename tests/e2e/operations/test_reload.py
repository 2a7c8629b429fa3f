"""Hot reload under load.

While 8 clients keep sending requests, the config is edited to (a) add a model,
(b) change a model to a new version, (c) remove a model and (d) become invalid.
The same scenario runs three times, once per trigger: saving the file (the
inotify watcher), SIGHUP, and `splitlearnctl reload-config`. The new version of (b)
is made differently each time: a new file named in the YAML, a new file renamed
over the old path, and the old file rewritten in place.

Checked: no request to an unaffected, added (once ready) or changed model fails;
every request that starts after (b) finished answers with the new version; the
removed model answers NOT_FOUND afterwards; the invalid file changes nothing, the
error shows in `splitlearnctl status`, and every model keeps serving.
"""
import copy
import os
import signal
import time
import unittest

import grpc

from ops_fixture import Daemon, Hammer, management_pb2, model_entry, wait_until, write_add_model

STABLE, CHANGING, DOOMED, ADDED = "stable", "changing", "doomed", "added"


class ReloadScenario:
    TRIGGER = None  # "file change", "SIGHUP" or "ReloadConfig"

    def setUp(self):
        self.daemon = Daemon([model_entry(STABLE, "stable.pt"), model_entry(CHANGING, "changing.pt"),
                              model_entry(DOOMED, "doomed.pt")],
                             watch_config=self.TRIGGER == "file change", prefix="reload")
        self.addCleanup(self.daemon.close)
        write_add_model(self.daemon.path("stable.pt"), 1)
        write_add_model(self.daemon.path("changing.pt"), 10)
        write_add_model(self.daemon.path("doomed.pt"), 5)
        self.daemon.start()
        self.manage = self.daemon.management_stub()

    # --- helpers -------------------------------------------------------------------

    def status(self):
        return self.manage.GetStatus(management_pb2.GetStatusRequest(), timeout=30)

    def model(self, model_id):
        return self.manage.GetModel(management_pb2.GetModelRequest(id=model_id), timeout=30)

    def apply(self, config=None, raw_text=None, expect_ok=True):
        """Writes the config (unless both are None) and reloads it with this class's
        trigger; returns the reload's result as GetStatus reports it."""
        before = self.status().last_reload
        if raw_text is not None:
            with open(self.daemon.config_path + ".new", "w") as f:
                f.write(raw_text)
            os.replace(self.daemon.config_path + ".new", self.daemon.config_path)
        elif config is not None:
            self.daemon.write_config(config)
        if self.TRIGGER == "SIGHUP":
            self.daemon.send_signal(signal.SIGHUP)
        elif self.TRIGGER == "ReloadConfig":
            r = self.daemon.ctl("reload-config")
            self.assertEqual(r.returncode, 0 if expect_ok else 1, r.stdout + r.stderr)
            self.assertIn("reload OK" if expect_ok else "reload FAILED", r.stdout)
        last = self.daemon.wait_for_reload(before, self.TRIGGER, timeout_s=60)
        self.assertEqual(last.ok, expect_ok, last.message)
        return last

    # --- the scenario ------------------------------------------------------------------

    def test_add_change_remove_invalid_under_load(self):
        d = self.daemon
        config = copy.deepcopy(d.config)
        with Hammer(d, [STABLE, CHANGING, DOOMED], clients=8) as hammer:
            for m in (STABLE, CHANGING, DOOMED):
                hammer.wait_for_requests(m, 20)

            # (a) add a model
            write_add_model(d.path("added.pt"), 100)
            config["models"].append(model_entry(ADDED, "added.pt"))
            result = self.apply(config)
            self.assertIn(ADDED, result.added)
            self.assertEqual(self.model(ADDED).state, management_pb2.READY)
            hammer.set_targets([STABLE, CHANGING, DOOMED, ADDED])
            hammer.wait_for_requests(ADDED, 20)

            # (b) a new version of a model
            version_before = self.model(CHANGING).version
            if self.TRIGGER == "file change":
                write_add_model(d.path("changing-v2.pt"), 20)
                next(m for m in config["models"] if m["id"] == CHANGING)["path"] = "changing-v2.pt"
                result = self.apply(config)
            elif self.TRIGGER == "SIGHUP":
                write_add_model(d.path("changing.pt"), 20)  # new file renamed over the old path
                result = self.apply()
            else:
                write_add_model(d.path("changing.pt"), 20, in_place=True)  # same file, new bytes
                result = self.apply()
            self.assertIn(CHANGING, result.changed)
            info = self.model(CHANGING)
            self.assertGreater(info.version, version_before)
            self.assertFalse(info.load_pending)
            swapped_at = time.monotonic()
            seen = sum(1 for r in hammer.snapshot() if r[0] == CHANGING)
            hammer.wait_for_requests(CHANGING, seen + 40)

            # (c) remove a model
            config["models"] = [m for m in config["models"] if m["id"] != DOOMED]
            removal_started = time.monotonic()
            result = self.apply(config)
            self.assertIn(DOOMED, result.removed)
            removed_at = time.monotonic()
            wait_until(lambda: any(r[0] == DOOMED and r[1] > removed_at for r in hammer.snapshot()), 30,
                       "a request to the removed model")
            hammer.set_targets([STABLE, CHANGING, ADDED])

            # (d) an invalid file
            invalid_at = time.monotonic()
            result = self.apply(raw_text="server:\n  listen: [this is not valid\n", expect_ok=False)
            self.assertFalse(result.config_valid)
            self.assertIn("config.yaml", result.message)
            status = d.ctl("status")
            self.assertEqual(status.returncode, 3, status.stdout + status.stderr)
            self.assertIn("last reload FAILED", status.stdout)
            self.assertIn("invalid config, nothing changed", status.stdout)
            for m in (STABLE, CHANGING, ADDED):
                self.assertIn(f"\n{m}", status.stdout)
                self.assertEqual(self.model(m).state, management_pb2.READY)
            for m in (STABLE, CHANGING, ADDED):
                seen = sum(1 for r in hammer.snapshot() if r[0] == m)
                hammer.wait_for_requests(m, seen + 20)

        records = hammer.snapshot()
        self.assertTrue(d.alive(), d.log())

        def failures(model, since=0.0):
            return [r for r in records if r[0] == model and r[3] != grpc.StatusCode.OK and r[1] >= since]

        self.assertEqual(failures(STABLE), [], "unaffected model")
        self.assertEqual(failures(CHANGING), [], "changed model")
        self.assertEqual(failures(ADDED), [], "added model")
        self.assertTrue(all(r[4] == 1.0 for r in records if r[0] == STABLE))
        self.assertTrue(all(r[4] == 100.0 for r in records if r[0] == ADDED))
        changing = [r for r in records if r[0] == CHANGING]
        self.assertTrue(all(r[4] in (10.0, 20.0) for r in changing))
        after_swap = [r for r in changing if r[1] > swapped_at]
        self.assertGreater(len(after_swap), 0)
        self.assertEqual([r for r in after_swap if r[4] != 20.0], [], "requests after the swap saw the old version")
        doomed = [r for r in records if r[0] == DOOMED]
        self.assertEqual([r for r in doomed if r[3] != grpc.StatusCode.OK and r[3] != grpc.StatusCode.NOT_FOUND], [])
        self.assertEqual([r for r in doomed if r[3] == grpc.StatusCode.NOT_FOUND and r[2] < removal_started], [])
        self.assertTrue(all(r[3] == grpc.StatusCode.NOT_FOUND for r in doomed if r[1] > removed_at))
        late = [r for r in records if r[1] > invalid_at]
        self.assertTrue(late and all(r[3] == grpc.StatusCode.OK for r in late))
        print(f"\n[{self.TRIGGER}] {len(records)} requests from 8 clients: "
              + ", ".join(f"{m} {sum(1 for r in records if r[0] == m)} "
                          f"(failed {len([r for r in records if r[0] == m and r[3] != grpc.StatusCode.OK])})"
                          for m in (STABLE, CHANGING, ADDED, DOOMED))
              + f"; after the swap {len(after_swap)} requests, all answered by the new version")
        self.assertEqual(d.stop(), 0, d.log())


class ReloadBySavingTheFile(ReloadScenario, unittest.TestCase):
    TRIGGER = "file change"


class ReloadBySighup(ReloadScenario, unittest.TestCase):
    TRIGGER = "SIGHUP"


class ReloadBySplitlearnctl(ReloadScenario, unittest.TestCase):
    TRIGGER = "ReloadConfig"


if __name__ == "__main__":
    unittest.main()
