"""TLS and tokens against the real daemon, with real gRPC clients (Python grpcio,
splitlearnctl, the splitlearnd_client package).

Certificates are made here with the openssl command: a CA and a server certificate for
127.0.0.1/localhost, a client CA with a client certificate, and unrelated CAs whose
certificates must be refused. Every daemon runs at log level trace, and its whole
output is searched for every token value the tests sent, good or bad.
"""
import os
import pwd
import grp
import shutil
import struct
import subprocess
import sys
import unittest

import secfixture as fx
from secfixture import grpc, mpb, mpb_grpc, pb, pb_grpc
from splitlearnd_launcher import SOURCE_DIR, DaemonTestCase, require, wait_until

SPLITLEARNCTL_BIN = require("SPLITLEARNCTL_BIN")
TIMEOUT = 15

APP_TOKEN = "app-7c1f0d9e5b2a48f6a3c9d1e0b7f4a2c8"    # compute
OPS_TOKEN = "ops-e4b8a1c7d3f94e2b8c6a0f1d5e7b3a9c"    # management
BOTH_TOKEN = "both-0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d"  # compute,management
WRONG_TOKEN = "wrong-1f2e3d4c5b6a79880f1e2d3c4b5a6978"
ROTATED_TOKEN = "rotated-5d4c3b2a1f0e9d8c7b6a5f4e3d2c1b0a"


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


class Certs:
    """PEM files made with the openssl command in `folder`."""

    def __init__(self, folder):
        self.folder = folder

    def path(self, name):
        return os.path.join(self.folder, name)

    def read(self, name):
        with open(self.path(name), "rb") as f:
            return f.read()

    def key(self, name):
        openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", name + ".key",
                cwd=self.folder)

    def ca(self, name):
        self.key(name)
        openssl("req", "-x509", "-new", "-key", name + ".key", "-out", name + ".pem", "-days", "2",
                "-subj", "/CN=" + name, cwd=self.folder)

    def issue(self, ca, name, client=False):
        """A certificate for `name` signed by `ca`: a server one for 127.0.0.1/localhost, or a client one."""
        self.key(name)
        openssl("req", "-new", "-key", name + ".key", "-out", name + ".csr", "-subj", "/CN=" + name, cwd=self.folder)
        ext = self.path(name + ".ext")
        with open(ext, "w") as f:
            if client:
                f.write("extendedKeyUsage=clientAuth\n")
            else:
                f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
        openssl("x509", "-req", "-in", name + ".csr", "-CA", ca + ".pem", "-CAkey", ca + ".key", "-CAcreateserial",
                "-out", name + ".pem", "-days", "2", "-extfile", ext, cwd=self.folder)


def replace_file(path, data):
    tmp = path + ".new"
    with open(tmp, "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def write_tokens(path, lines):
    replace_file(path, "# name scopes token\n" + "".join(line + "\n" for line in lines))


def bearer(token):
    return (("authorization", "Bearer " + token),) if token is not None else None


def compute_code(stub, token, timeout=TIMEOUT):
    try:
        reply = stub.Compute(fx.float_request([2, 4], 1.5, model_id="double"), metadata=bearer(token),
                             timeout=timeout)
    except grpc.RpcError as e:
        return e.code()
    assert struct.unpack("<8f", reply.data) == (3.0,) * 8, "wrong answer"
    return grpc.StatusCode.OK


def status_code(stub, token, timeout=TIMEOUT):
    try:
        stub.GetStatus(mpb.GetStatusRequest(), metadata=bearer(token), timeout=timeout)
        return grpc.StatusCode.OK
    except grpc.RpcError as e:
        return e.code()


def health_check(channel, timeout=TIMEOUT):
    """grpc.health.v1.Health/Check of the whole server: the raw response bytes."""
    check = channel.unary_unary("/grpc.health.v1.Health/Check", request_serializer=lambda b: b,
                                response_deserializer=lambda b: b)
    return check(b"", timeout=timeout)


class SecurityTest(DaemonTestCase):
    """One daemon per class, made by the subclass's daemon_settings(). Its /metrics
    tells when a reload has finished: the management service may not admit the tests."""
    tokens_sent = [APP_TOKEN, OPS_TOKEN, BOTH_TOKEN, WRONG_TOKEN, ROTATED_TOKEN]

    @classmethod
    def make_daemon(cls, workdir):
        cls.certs = Certs(workdir)
        cls.certs.ca("ca")
        cls.certs.issue("ca", "server")
        cls.certs.ca("clientca")
        cls.certs.issue("clientca", "client", client=True)
        cls.certs.ca("otherca")
        cls.certs.issue("otherca", "otherclient", client=True)
        cls.tokens_path = os.path.join(workdir, "tokens")
        write_tokens(cls.tokens_path, [f"app compute {APP_TOKEN}", f"ops management {OPS_TOKEN}",
                                       f"both compute,management {BOTH_TOKEN}"])
        cls.prepare_files()
        files = fx.make_models(workdir)
        models = [fx.model_entry("double", files["double"], default=True)]
        settings = {"log_level": "trace", "metrics_listen": "127.0.0.1:0"}
        settings.update(cls.daemon_settings())
        return fx.Daemon(workdir, models, server=settings)

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.manage_address = cls.daemon.management

    @classmethod
    def tearDownClass(cls):
        super().tearDownClass()
        log = cls.daemon.log()
        for token in cls.tokens_sent:
            if token in log:
                raise AssertionError(f"a token value appears in the daemon's output:\n{log}")

    @classmethod
    def daemon_settings(cls):
        return {}

    @classmethod
    def prepare_files(cls):
        pass

    def setUp(self):
        self.assertDaemonAlive()

    # Channels: a new one for every check, so that no TLS session outlives a change.
    def tls_credentials(self, ca="ca", client=None):
        return grpc.ssl_channel_credentials(
            root_certificates=self.certs.read(ca + ".pem") if ca else None,
            private_key=self.certs.read(client + ".key") if client else None,
            certificate_chain=self.certs.read(client + ".pem") if client else None)

    def compute(self, token=None, ca="ca", client=None, plaintext=False):
        channel = (grpc.insecure_channel(self.daemon.address) if plaintext
                   else grpc.secure_channel(self.daemon.address, self.tls_credentials(ca, client)))
        with channel:
            return compute_code(pb_grpc.ComputeServiceStub(channel), token)

    def manage(self, token=None, ca="ca", plaintext=False):
        if self.manage_address.startswith("unix:") or plaintext:
            channel = grpc.insecure_channel(self.manage_address)
        else:
            channel = grpc.secure_channel(self.manage_address, self.tls_credentials(ca))
        with channel:
            return status_code(mpb_grpc.ManagementServiceStub(channel), token)

    def ctl(self, *args):
        return subprocess.run([SPLITLEARNCTL_BIN, *args], capture_output=True, text=True, timeout=120)

    def token_file(self, name, token):
        path = os.path.join(self.workdir, name)
        replace_file(path, token + "\n")
        return path

    def reload(self):
        """SIGHUP; returns the log lines the reload wrote once it finished."""
        offset = self.daemon.log_size()
        before = self.daemon.metric("splitlearnd_reloads_total")
        self.daemon.reload(until=lambda: self.daemon.metric("splitlearnd_reloads_total") > before)
        return self.daemon.log_since(offset)

    def assertNoTokenInLog(self):
        log = self.daemon.log()
        for token in self.tokens_sent:
            self.assertNotIn(token, log, "a token value appears in the daemon's output")


class TlsAndTokens(SecurityTest):
    """Server TLS (no client certificates), tokens on compute, management over TCP."""

    @classmethod
    def daemon_settings(cls):
        return {"management_listen": "127.0.0.1:0",
                "tls": {"cert_file": "server.pem", "key_file": "server.key"},
                "auth": {"token_file": "tokens"}}

    def test_a_client_needs_the_ca(self):
        self.assertEqual(self.compute(APP_TOKEN, plaintext=True), grpc.StatusCode.UNAVAILABLE)
        self.assertEqual(self.compute(APP_TOKEN, ca=None), grpc.StatusCode.UNAVAILABLE)  # the system's CAs
        self.assertEqual(self.compute(APP_TOKEN, ca="otherca"), grpc.StatusCode.UNAVAILABLE)
        self.assertEqual(self.compute(APP_TOKEN, ca="ca"), grpc.StatusCode.OK)  # and the answer is right

    def test_compute_tokens(self):
        self.assertEqual(self.compute(None), grpc.StatusCode.UNAUTHENTICATED)
        self.assertEqual(self.compute(WRONG_TOKEN), grpc.StatusCode.UNAUTHENTICATED)
        self.assertEqual(self.compute(OPS_TOKEN), grpc.StatusCode.PERMISSION_DENIED)
        self.assertEqual(self.compute(APP_TOKEN), grpc.StatusCode.OK)
        self.assertEqual(self.compute(BOTH_TOKEN), grpc.StatusCode.OK)
        channel = grpc.secure_channel(self.daemon.address, self.tls_credentials())
        with channel:
            stub = pb_grpc.ComputeServiceStub(channel)
            request = fx.float_request([1, 4], model_id="double")
            for metadata in ((("authorization", "Basic " + APP_TOKEN),), (("authorization", "Bearer"),),
                             (("authorization", "Bearer " + APP_TOKEN), ("authorization", "Bearer " + APP_TOKEN))):
                with self.subTest(metadata=[k for k, _ in metadata]):
                    with self.assertRaises(grpc.RpcError) as ctx:
                        stub.Compute(request, metadata=metadata, timeout=TIMEOUT)
                    self.assertEqual(ctx.exception.code(), grpc.StatusCode.UNAUTHENTICATED)
            # Every compute call needs the token, the legacy health check and service info too.
            for call, req in ((stub.HealthCheck, pb.HealthRequest()), (stub.GetServiceInfo, pb.ServiceInfoRequest()),
                              (stub.OpenSession, pb.OpenSessionRequest(model_id="double"))):
                with self.assertRaises(grpc.RpcError) as ctx:
                    call(req, timeout=TIMEOUT)
                self.assertEqual(ctx.exception.code(), grpc.StatusCode.UNAUTHENTICATED)
            self.assertEqual(stub.HealthCheck(pb.HealthRequest(), metadata=bearer(APP_TOKEN), timeout=TIMEOUT).status,
                             "ok")
            stream = stub.Generate(iter([request]), timeout=TIMEOUT)
            with self.assertRaises(grpc.RpcError) as ctx:
                list(stream)
            self.assertEqual(ctx.exception.code(), grpc.StatusCode.UNAUTHENTICATED)
        log = self.daemon.log()
        self.assertIn("token 'ops' does not have the compute scope", log)

    def test_management_tokens(self):
        self.assertEqual(self.manage(None), grpc.StatusCode.UNAUTHENTICATED)
        self.assertEqual(self.manage(WRONG_TOKEN), grpc.StatusCode.UNAUTHENTICATED)
        self.assertEqual(self.manage(APP_TOKEN), grpc.StatusCode.PERMISSION_DENIED)
        self.assertEqual(self.manage(OPS_TOKEN), grpc.StatusCode.OK)
        self.assertEqual(self.manage(BOTH_TOKEN), grpc.StatusCode.OK)
        self.assertEqual(self.manage(OPS_TOKEN, plaintext=True), grpc.StatusCode.UNAVAILABLE)  # TLS there too
        self.assertEqual(self.manage(OPS_TOKEN, ca="otherca"), grpc.StatusCode.UNAVAILABLE)

    def test_health_needs_no_token_and_reflection_is_off(self):
        channel = grpc.secure_channel(self.daemon.address, self.tls_credentials())
        with channel:
            self.assertEqual(health_check(channel), b"\x08\x01")  # SERVING
            reflect = channel.stream_stream("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                                            request_serializer=lambda b: b, response_deserializer=lambda b: b)
            with self.assertRaises(grpc.RpcError) as ctx:
                list(reflect(iter([b""]), metadata=bearer(APP_TOKEN), timeout=TIMEOUT))
            self.assertEqual(ctx.exception.code(), grpc.StatusCode.UNIMPLEMENTED)

    def test_splitlearnctl(self):
        ca = self.certs.path("ca.pem")
        app = self.token_file("app.token", APP_TOKEN)
        ops = self.token_file("ops.token", OPS_TOKEN)
        r = self.ctl("-a", self.daemon.address, "--tls-ca", ca, "--token-file", app, "infer", "-m", "double",
                     "--shape", "2x4")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("output 2x4 float32", r.stdout)
        r = self.ctl("-a", self.daemon.address, "--tls-ca", ca, "--token-file", app, "health")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("healthy", r.stdout)
        r = self.ctl("-a", self.daemon.address, "--tls-ca", ca, "health")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("UNAUTHENTICATED", r.stderr)
        env = dict(os.environ, SPLITLEARND_TOKEN=APP_TOKEN)
        r = subprocess.run([SPLITLEARNCTL_BIN, "-a", self.daemon.address, "--tls-ca", ca, "health"],
                           capture_output=True, text=True, env=env, timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        r = self.ctl("-a", self.daemon.address, "--token-file", app, "--timeout-ms", "5000", "health")  # no TLS
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("UNAVAILABLE", r.stderr)
        r = self.ctl("--manage", self.manage_address, "--tls-ca", ca, "--token-file", ops, "status")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("reload OK", r.stdout)
        r = self.ctl("--manage", self.manage_address, "--tls-ca", ca, "--token-file", app, "status")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("PERMISSION_DENIED", r.stderr)

    def test_python_client_package(self):
        sys.path.insert(0, os.path.join(SOURCE_DIR, "client", "python"))
        try:
            import torch
            from splitlearnd_client import Client, SplitlearndError
            from splitlearnd_client.replicas import ReplicaSet
        finally:
            sys.path.pop(0)
        x = torch.full((2, 4), 1.5)
        with Client(self.daemon.address, root_certificates=self.certs.read("ca.pem"), token=APP_TOKEN,
                    timeout=TIMEOUT) as client:
            self.assertTrue(torch.equal(client.compute(x, model_id="double").output, x * 2))
        with Client(self.daemon.address, root_certificates=self.certs.read("ca.pem"), token=WRONG_TOKEN,
                    timeout=TIMEOUT) as client:
            with self.assertRaises(SplitlearndError) as ctx:
                client.compute(x, model_id="double")
            self.assertEqual(ctx.exception.code, grpc.StatusCode.UNAUTHENTICATED)
        # Replicas: health over TLS needs no token; opening a session does. The double model
        # has no sessions, so a call that got past the token check is FAILED_PRECONDITION.
        with ReplicaSet([self.daemon.address], credentials=self.tls_credentials(), token=APP_TOKEN) as replicas:
            self.assertEqual(replicas.healthy_endpoints("double"), [self.daemon.address])
            with self.assertRaises(grpc.RpcError) as ctx:
                replicas.open_session("double")
            self.assertEqual(ctx.exception.code(), grpc.StatusCode.FAILED_PRECONDITION)
        with ReplicaSet([self.daemon.address], credentials=self.tls_credentials(), token=WRONG_TOKEN) as replicas:
            with self.assertRaises(grpc.RpcError) as ctx:
                replicas.open_session("double")
            self.assertEqual(ctx.exception.code(), grpc.StatusCode.UNAUTHENTICATED)

    def test_z_no_token_in_the_log(self):
        # Good and bad tokens on both services at trace level, then the whole output.
        for token in (APP_TOKEN, OPS_TOKEN, BOTH_TOKEN, WRONG_TOKEN, ROTATED_TOKEN):
            self.compute(token)
            self.manage(token)
        self.assertIn(" trace ", self.daemon.log())
        self.assertIn("with token 'app'", self.daemon.log())  # names, not values
        self.assertNoTokenInLog()


class MutualTls(SecurityTest):
    @classmethod
    def daemon_settings(cls):
        return {"tls": {"cert_file": "server.pem", "key_file": "server.key", "client_ca_file": "clientca.pem"}}

    def test_a_client_certificate_is_required(self):
        self.assertEqual(self.compute(ca="ca"), grpc.StatusCode.UNAVAILABLE)
        self.assertEqual(self.compute(ca="ca", client="otherclient"), grpc.StatusCode.UNAVAILABLE)
        self.assertEqual(self.compute(ca="otherca", client="client"), grpc.StatusCode.UNAVAILABLE)
        self.assertEqual(self.compute(ca="ca", client="client"), grpc.StatusCode.OK)

    def test_splitlearnctl_with_a_client_certificate(self):
        base = ["-a", self.daemon.address, "--tls-ca", self.certs.path("ca.pem")]
        r = self.ctl(*base, "--tls-cert", self.certs.path("client.pem"), "--tls-key", self.certs.path("client.key"),
                     "infer", "--shape", "1x4")
        self.assertEqual(r.returncode, 0, r.stderr)
        r = self.ctl(*base, "--timeout-ms", "5000", "infer", "--shape", "1x4")
        self.assertNotEqual(r.returncode, 0)
        r = self.ctl(*base, "--tls-cert", self.certs.path("client.pem"), "health")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("--tls-key", r.stderr)


class OptionalClientCertificate(SecurityTest):
    @classmethod
    def daemon_settings(cls):
        return {"tls": {"cert_file": "server.pem", "key_file": "server.key", "client_ca_file": "clientca.pem",
                        "require_client_cert": False}}

    def test_a_certificate_is_verified_when_sent(self):
        self.assertEqual(self.compute(ca="ca"), grpc.StatusCode.OK)
        self.assertEqual(self.compute(ca="ca", client="client"), grpc.StatusCode.OK)
        self.assertEqual(self.compute(ca="ca", client="otherclient"), grpc.StatusCode.UNAVAILABLE)


class ManagementOverTcpWithoutTokens(SecurityTest):
    @classmethod
    def daemon_settings(cls):
        return {"management_listen": "127.0.0.1:0"}

    def test_refused_until_explicitly_opened(self):
        channel = grpc.insecure_channel(self.manage_address)
        with channel:
            stub = mpb_grpc.ManagementServiceStub(channel)
            with self.assertRaises(grpc.RpcError) as ctx:
                stub.GetStatus(mpb.GetStatusRequest(), timeout=TIMEOUT)
            self.assertEqual(ctx.exception.code(), grpc.StatusCode.UNAUTHENTICATED)
            self.assertIn("server.auth.token_file", ctx.exception.details())
            self.assertIn("server.auth.management: none", ctx.exception.details())
        self.assertIn("no server.auth.token_file is set", self.daemon.log())
        # Compute needs no token here (no token file), and is plaintext.
        self.assertEqual(self.compute(plaintext=True), grpc.StatusCode.OK)
        # The explicit opt-out, applied by a reload.
        self.daemon.config["server"]["auth"] = {"management": "none"}
        self.daemon.write_config()
        self.assertIn("reload done", self.reload())
        self.assertEqual(self.manage(plaintext=True), grpc.StatusCode.OK)


class UnixPeers(SecurityTest):
    """The management socket: the peer's uid and groups decide; a token is optional."""

    @classmethod
    def daemon_settings(cls):
        return {"auth": {"token_file": "tokens", "compute": "none"}}

    def set_auth(self, **auth):
        self.daemon.config["server"]["auth"] = dict({"token_file": "tokens", "compute": "none"}, **auth)
        self.daemon.write_config()
        self.assertIn("reload done", self.reload())

    def test_peers_and_tokens(self):
        uid = os.getuid()
        # Defaults: root and the daemon's own uid (the daemon runs as this test's user).
        self.assertEqual(self.manage(None), grpc.StatusCode.OK)
        self.assertEqual(self.manage(OPS_TOKEN), grpc.StatusCode.OK)
        self.assertEqual(self.manage(WRONG_TOKEN), grpc.StatusCode.UNAUTHENTICATED)
        self.assertEqual(self.manage(APP_TOKEN), grpc.StatusCode.PERMISSION_DENIED)
        r = self.ctl("--manage", self.manage_address, "status")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)

        # Neither this uid nor any of its groups: the connection is closed at once.
        other = 4242 if uid != 4242 else 4343
        offset = self.daemon.log_size()
        self.set_auth(management_unix_uids=[other], management_unix_groups=[])
        self.assertEqual(self.manage(None), grpc.StatusCode.UNAVAILABLE)
        self.assertEqual(self.manage(OPS_TOKEN), grpc.StatusCode.UNAVAILABLE)
        self.daemon.wait_for_log(rf"refused a connection from uid {uid} ", after=offset)
        r = self.ctl("--manage", self.manage_address, "--timeout-ms", "5000", "status")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("management_unix_uids", r.stderr)
        # Compute is not affected.
        self.assertEqual(self.compute(plaintext=True), grpc.StatusCode.OK)

        # Allowed through a group the user belongs to.
        group = grp.getgrgid(pwd.getpwuid(uid).pw_gid).gr_name
        self.daemon.config["server"]["auth"] = {"token_file": "tokens", "compute": "none",
                                                "management_unix_uids": [other],
                                                "management_unix_groups": [group]}
        self.daemon.write_config()
        # The socket refuses us until the reload is done: it is seen when it lets us in.
        self.daemon.reload(until=lambda: self.manage(None) == grpc.StatusCode.OK)
        self.set_auth()  # back to the defaults
        self.assertEqual(self.manage(None), grpc.StatusCode.OK)


class Rotation(SecurityTest):
    """Certificates and tokens re-read on SIGHUP; bad files keep the old ones."""

    @classmethod
    def daemon_settings(cls):
        return {"tls": {"cert_file": "live.pem", "key_file": "live.key"}, "auth": {"token_file": "tokens"}}

    @classmethod
    def prepare_files(cls):
        # The daemon serves live.pem/live.key, which the tests replace.
        shutil.copy(cls.certs.path("server.pem"), cls.certs.path("live.pem"))
        shutil.copy(cls.certs.path("server.key"), cls.certs.path("live.key"))

    def reload(self):
        """Here the management socket admits the tests: the reload's result is awaited
        there, so that status() shows it."""
        offset = self.daemon.log_size()
        self.daemon.reload()
        return self.daemon.log_since(offset)

    def status(self):
        return self.daemon.status(timeout_s=TIMEOUT)

    def test_1_tokens_rotate(self):
        self.assertEqual(self.compute(APP_TOKEN), grpc.StatusCode.OK)
        write_tokens(self.tokens_path, [f"app compute {ROTATED_TOKEN}", f"ops management {OPS_TOKEN}"])
        self.assertIn("reload done", self.reload())
        self.assertEqual(self.compute(ROTATED_TOKEN), grpc.StatusCode.OK)
        self.assertEqual(self.compute(APP_TOKEN), grpc.StatusCode.UNAUTHENTICATED)
        self.assertEqual(self.compute(BOTH_TOKEN), grpc.StatusCode.UNAUTHENTICATED)  # removed
        self.assertIn("tokens added or changed: app (new value)", self.daemon.log())

    def test_2_a_bad_token_file_keeps_the_old_tokens(self):
        with open(self.tokens_path) as f:
            good = f.read()
        write_tokens(self.tokens_path, [f"app compute {APP_TOKEN}", f"app management {OPS_TOKEN}"])
        log = self.reload()
        self.assertIn("reload refused", log)
        self.assertIn("duplicate name 'app'", log)
        status = self.status()
        self.assertFalse(status.last_reload.ok)
        self.assertIn("duplicate name 'app'", status.last_reload.message)
        self.assertEqual(self.compute(ROTATED_TOKEN), grpc.StatusCode.OK)
        self.assertEqual(self.compute(APP_TOKEN), grpc.StatusCode.UNAUTHENTICATED)
        replace_file(self.tokens_path, good)
        self.assertIn("reload done", self.reload())

    def test_3_certificates_rotate(self):
        self.assertEqual(self.compute(ROTATED_TOKEN, ca="ca"), grpc.StatusCode.OK)
        self.certs.ca("ca2")
        self.certs.issue("ca2", "server2")
        replace_file(self.certs.path("live.pem"), self.certs.read("server2.pem"))
        replace_file(self.certs.path("live.key"), self.certs.read("server2.key"))
        self.assertIn("reload done", self.reload())
        wait_until(lambda: self.compute(ROTATED_TOKEN, ca="ca2") == grpc.StatusCode.OK, 30, "the new certificate")
        self.assertEqual(self.compute(ROTATED_TOKEN, ca="ca"), grpc.StatusCode.UNAVAILABLE)

    def test_4_a_bad_certificate_keeps_the_old_one(self):
        self.assertEqual(self.compute(ROTATED_TOKEN, ca="ca2"), grpc.StatusCode.OK)
        self.certs.key("stray")
        replace_file(self.certs.path("live.key"), self.certs.read("stray.key"))  # does not match live.pem
        log = self.reload()
        self.assertIn("reload refused", log)
        self.assertIn("does not match", log)
        r = self.ctl("--manage", self.manage_address, "status")
        self.assertEqual(r.returncode, 3, r.stdout + r.stderr)  # the last reload failed
        self.assertIn("reload FAILED", r.stdout)
        self.assertIn("server.tls.key_file", r.stdout)
        self.assertEqual(self.compute(ROTATED_TOKEN, ca="ca2"), grpc.StatusCode.OK)
        replace_file(self.certs.path("live.pem"), b"-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n")
        log = self.reload()
        self.assertIn("reload refused", log)
        self.assertIn("server.tls.cert_file", log)
        self.assertEqual(self.compute(ROTATED_TOKEN, ca="ca2"), grpc.StatusCode.OK)
        self.assertFalse(self.status().last_reload.ok)


def setUpModule():
    if shutil.which("openssl") is None:
        raise RuntimeError("the openssl command is missing (scripts/bootstrap.sh installs it)")


if __name__ == "__main__":
    unittest.main()
