"""`pip install` of the package works offline and ships the generated stubs.

The package is copied to a temporary folder (so the source tree gets no build
output), installed with the system's setuptools into a fresh virtual environment that
sees the system's grpcio, protobuf, numpy and torch, and imported from elsewhere with
no hint where the stubs are: they must come from splitlearnd_client/generated.
"""
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROTO_DIR = os.path.normpath(os.path.join(PACKAGE_DIR, "..", "..", "proto"))


def _have(module):
    return subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True).returncode == 0


@unittest.skipUnless(shutil.which("protoc"), "protoc is not installed")
@unittest.skipUnless(os.path.isfile(os.path.join(PROTO_DIR, "compute.proto")), "not in a source checkout")
@unittest.skipUnless(_have("ensurepip") and _have("pip"), "venv/pip are not available")
class PipInstall(unittest.TestCase):
    def test_install_into_a_virtual_environment(self):
        work = tempfile.mkdtemp(prefix="splitlearnd-pip-")
        try:
            source = os.path.join(work, "src")
            shutil.copytree(PACKAGE_DIR, source, ignore=shutil.ignore_patterns(
                "build", "*.egg-info", "__pycache__", "generated", "tests"))
            venv = os.path.join(work, "venv")
            subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", venv], check=True)
            python = os.path.join(venv, "bin", "python")
            env = dict(os.environ, SPLITLEARND_PROTO_DIR=PROTO_DIR, PIP_DISABLE_PIP_VERSION_CHECK="1")
            env.pop("SPLITLEARND_PY_STUBS", None)
            pip = subprocess.run([python, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "--no-index",
                                  source], env=env, capture_output=True, text=True)
            self.assertEqual(pip.returncode, 0, pip.stdout + pip.stderr)

            env.pop("SPLITLEARND_PROTO_DIR")
            check = subprocess.run(
                [python, "-c",
                 "import torch, splitlearnd_client as s, splitlearnd_client.client as c\n"
                 "print(c.pb.__name__)\n"
                 "d, shape, code = s.encode(torch.ones(2, 3, dtype=torch.bfloat16))\n"
                 "assert torch.equal(s.decode(d, shape, code), torch.ones(2, 3, dtype=torch.bfloat16))\n"
                 + ("from splitlearnd_client.generated import compute_pb2_grpc\n"
                    if shutil.which("grpc_python_plugin") else "")],
                cwd=work, env=env, capture_output=True, text=True)
            self.assertEqual(check.returncode, 0, check.stdout + check.stderr)
            self.assertEqual(check.stdout.strip(), "splitlearnd_client.generated.compute_pb2")
        finally:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    unittest.main()
