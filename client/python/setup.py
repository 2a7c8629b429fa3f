"""Builds splitlearnd_client. The protocol's Python stubs are generated here, from
proto/compute.proto of this repository (or the folder named by SPLITLEARND_PROTO_DIR),
with `protoc` and, when it is installed, grpc_python_plugin. Without protoc the
package still installs and finds its stubs at run time (splitlearnd_client/_proto.py).

    pip install ./client/python
    pip install --no-build-isolation ./client/python   # offline: use the installed setuptools
"""
import os
import shutil
import subprocess

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))


def proto_dir():
    return os.environ.get("SPLITLEARND_PROTO_DIR") or os.path.normpath(os.path.join(HERE, "..", "..", "proto"))


def generate_stubs(out_dir):
    """Writes compute_pb2.py (and compute_pb2_grpc.py) into out_dir. False if it cannot."""
    protoc = shutil.which("protoc")
    source = os.path.join(proto_dir(), "compute.proto")
    if not protoc or not os.path.isfile(source):
        print(f"splitlearnd_client: not generating stubs (protoc: {protoc}, proto: {source})")
        return False
    os.makedirs(out_dir, exist_ok=True)
    cmd = [protoc, f"--proto_path={proto_dir()}", f"--python_out={out_dir}"]
    plugin = shutil.which("grpc_python_plugin")
    if plugin:
        cmd += [f"--grpc_out={out_dir}", f"--plugin=protoc-gen-grpc={plugin}"]
    subprocess.run(cmd + [source], check=True)
    grpc_stub = os.path.join(out_dir, "compute_pb2_grpc.py")
    if os.path.isfile(grpc_stub):
        # The generated import is top-level; inside a package it must be relative.
        with open(grpc_stub) as f:
            text = f.read()
        with open(grpc_stub, "w") as f:
            f.write(text.replace("import compute_pb2 as", "from . import compute_pb2 as"))
    with open(os.path.join(out_dir, "__init__.py"), "w") as f:
        f.write('"""Generated from proto/compute.proto when the package was built."""\n')
    return True


class BuildWithStubs(build_py):
    def run(self):
        super().run()
        if not self.dry_run:
            generate_stubs(os.path.join(self.build_lib, "splitlearnd_client", "generated"))


setup(
    name="splitlearnd-client",
    version="0.1.0",
    description="Python client for splitlearnd, the split-learning model-serving daemon",
    packages=["splitlearnd_client"],
    python_requires=">=3.8",
    install_requires=["grpcio", "protobuf", "numpy", "torch"],
    cmdclass={"build_py": BuildWithStubs},
)
