"""Finds the message classes generated from proto/compute.proto.

In order:
  1. splitlearnd_client/generated/compute_pb2.py, written by setup.py when the package
     is built or installed (`pip install ./client/python`);
  2. the folder named by SPLITLEARND_PY_STUBS (the CMake build writes <build>/python);
  3. generated now with `protoc` from the proto/ folder of a source checkout (or the
     folder named by SPLITLEARND_PROTO_DIR) into a temporary folder.
"""
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile

_HERE = os.path.dirname(os.path.abspath(__file__))
_MODULE_NAME = "splitlearnd_client._compute_pb2"


def _load_file(path):
    spec = importlib.util.spec_from_file_location(_MODULE_NAME, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[_MODULE_NAME] = module
    spec.loader.exec_module(module)
    return module


def _proto_dir():
    folder = os.environ.get("SPLITLEARND_PROTO_DIR")
    if folder:
        return folder
    # client/python/splitlearnd_client -> <repo>/proto
    return os.path.normpath(os.path.join(_HERE, "..", "..", "..", "proto"))


def load_compute_pb2():
    try:
        from .generated import compute_pb2  # noqa: F401  (written at build time)
        return compute_pb2
    except ImportError:
        pass
    if _MODULE_NAME in sys.modules:
        return sys.modules[_MODULE_NAME]
    stubs = os.environ.get("SPLITLEARND_PY_STUBS")
    if stubs and os.path.isfile(os.path.join(stubs, "compute_pb2.py")):
        return _load_file(os.path.join(stubs, "compute_pb2.py"))
    proto_dir = _proto_dir()
    protoc = shutil.which("protoc")
    if protoc and os.path.isfile(os.path.join(proto_dir, "compute.proto")):
        out = tempfile.mkdtemp(prefix="splitlearnd-client-pb2-")
        try:
            subprocess.run([protoc, f"--proto_path={proto_dir}", f"--python_out={out}",
                            os.path.join(proto_dir, "compute.proto")], check=True)
            return _load_file(os.path.join(out, "compute_pb2.py"))
        finally:
            shutil.rmtree(out, ignore_errors=True)
    raise ImportError(
        "splitlearnd_client: compute_pb2 not found. Install the package with `pip install ./client/python` "
        "(it generates the stubs; needs protoc), set SPLITLEARND_PY_STUBS to a folder holding compute_pb2.py, "
        "or put protoc on PATH.")


compute_pb2 = load_compute_pb2()
