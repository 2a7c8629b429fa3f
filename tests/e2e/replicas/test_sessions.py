"""Show-it 3: a session is pinned to the replica that opened it. It keeps working
(with right answers) while another replica restarts; when its own replica goes away the
client gets SessionLostError naming the session and the replica, never an answer
computed without the session's cache."""
import os
import shutil
import tempfile
import threading
import unittest

import numpy as np

import replica_models
from replica_fixture import Replica, free_ports, grpc, model_entry, pb, replicas

DIM = replica_models.CACHE_DIM


class SessionPinningTest(unittest.TestCase):
    def setUp(self):
        self.workdir = tempfile.mkdtemp(prefix="splitlearnd-sessions-")
        self.addCleanup(shutil.rmtree, self.workdir, True)
        replica_models.write(replica_models.RunningSum, os.path.join(self.workdir, "cache.pt"))
        models = [model_entry("cache", "cache.pt", [1, 1, DIM], sessions={"max_sessions": 8})]
        self.replicas = [Replica(f"s{i}", self.workdir, port, models, drain_grace_s=1)
                         for i, port in enumerate(free_ports(3))]
        for r in self.replicas:
            self.addCleanup(r.close)
            r.start()
        self.set = replicas.ReplicaSet([r.endpoint for r in self.replicas])
        self.addCleanup(self.set.close)
        self.rng = np.random.default_rng(7)

    def step(self, session, history):
        """One token through the session, checked against what the cache must hold."""
        x = self.rng.standard_normal((1, 1, DIM)).astype(np.float32)
        answer = session.compute(pb.ComputeRequest(data=x.tobytes(), shape=[1, 1, DIM], dtype=pb.DTYPE_FLOAT32))
        history.append(x)
        expected = x + np.concatenate(history, axis=1).sum(axis=1, keepdims=True)
        y = np.frombuffer(answer.data, dtype="<f4").reshape(list(answer.shape))
        np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-3,  # float32 sums of many tokens
                                   err_msg=f"step {len(history)} on {session.endpoint}")
        self.assertEqual(answer.session_id, session.id)
        self.assertEqual(answer.session_tokens, len(history))

    def test_session_survives_other_restart_and_reports_own_loss(self):
        session = self.set.open_session("cache")
        home = next(r for r in self.replicas if r.endpoint == session.endpoint)
        other = next(r for r in self.replicas if r is not home)
        print(f"\nsession {session.id} opened on {home.name} ({home.endpoint})")
        history = []
        for _ in range(5):
            self.step(session, history)

        # Another replica restarts while the session keeps stepping.
        done = threading.Event()
        errors = []

        def restart_other():
            try:
                other.restart()
            except Exception as e:  # reported below
                errors.append(e)
            finally:
                done.set()

        t = threading.Thread(target=restart_other)
        t.start()
        steps_during = 0
        while not done.is_set() and steps_during < 10000:
            self.step(session, history)
            steps_during += 1
        t.join()
        self.assertEqual(errors, [])
        self.step(session, history)
        print(f"{steps_during} steps while {other.name} restarted; {len(history)} tokens in the session")
        self.assertGreater(steps_during, 0)

        # The session's own replica stops: the next step names the session and the replica.
        self.assertEqual(home.stop(), 0, home.run_log())
        with self.assertRaises(replicas.SessionLostError) as down:
            self.step(session, history)
        print("replica down:", down.exception)
        self.assertEqual(down.exception.code, grpc.StatusCode.UNAVAILABLE)
        for part in (session.id, home.endpoint, "lost"):
            self.assertIn(part, str(down.exception))

        # Back on the same port, without the session: still an error, not an answer.
        home.start()
        # Let the session's channel reconnect (it backs off after the refused step), so
        # that the step reaches the restarted replica.
        grpc.channel_ready_future(self.set.endpoint_channel(home.endpoint)).result(timeout=60)
        with self.assertRaises(replicas.SessionLostError) as gone:
            self.step(session, history)
        print("replica restarted:", gone.exception)
        self.assertEqual(gone.exception.code, grpc.StatusCode.NOT_FOUND)
        for part in (session.id, home.endpoint, "lost"):
            self.assertIn(part, str(gone.exception))

        # A new session starts from an empty cache and works.
        with self.set.open_session("cache") as fresh:
            fresh_history = []
            for _ in range(3):
                self.step(fresh, fresh_history)


if __name__ == "__main__":
    unittest.main()
