"""torch tensors to and from the wire: raw little-endian, C-contiguous bytes plus a
shape and the protocol's DType code (proto/compute.proto)."""
from typing import Iterable, Tuple

import numpy as np
import torch

# The protocol's DType enum.
DTYPE_UNSPECIFIED = 0  # float32, what legacy clients send
DTYPE_FLOAT32 = 1
DTYPE_FLOAT16 = 2
DTYPE_BFLOAT16 = 3
DTYPE_INT64 = 4
DTYPE_INT32 = 5
DTYPE_BOOL = 6

_TORCH_TO_CODE = {
    torch.float32: DTYPE_FLOAT32,
    torch.float16: DTYPE_FLOAT16,
    torch.bfloat16: DTYPE_BFLOAT16,
    torch.int64: DTYPE_INT64,
    torch.int32: DTYPE_INT32,
    torch.bool: DTYPE_BOOL,
}
_CODE_TO_TORCH = {code: dtype for dtype, code in _TORCH_TO_CODE.items()}
# numpy has no bfloat16: its raw 2-byte values travel as int16 and are viewed back.
_CODE_TO_NUMPY = {
    DTYPE_FLOAT32: np.dtype("<f4"),
    DTYPE_FLOAT16: np.dtype("<f2"),
    DTYPE_BFLOAT16: np.dtype("<i2"),
    DTYPE_INT64: np.dtype("<i8"),
    DTYPE_INT32: np.dtype("<i4"),
    DTYPE_BOOL: np.dtype("u1"),
}


def dtype_code(dtype: torch.dtype) -> int:
    """The protocol's code of a torch dtype; TypeError for a dtype it cannot carry."""
    try:
        return _TORCH_TO_CODE[dtype]
    except KeyError:
        raise TypeError(f"splitlearnd carries float32, float16, bfloat16, int64, int32 and bool tensors, "
                        f"not {dtype}") from None


def torch_dtype(code: int) -> torch.dtype:
    """The torch dtype of a protocol code (0, unspecified, is float32)."""
    if code == DTYPE_UNSPECIFIED:
        return torch.float32
    try:
        return _CODE_TO_TORCH[code]
    except KeyError:
        raise ValueError(f"unknown dtype code {code} on the wire") from None


def encode(tensor: torch.Tensor) -> Tuple[bytes, list, int]:
    """(bytes, shape, dtype code) of a tensor, copied to host memory."""
    if not isinstance(tensor, torch.Tensor):
        tensor = torch.as_tensor(tensor)
    code = dtype_code(tensor.dtype)
    t = tensor.detach().to("cpu").contiguous()
    if code == DTYPE_BFLOAT16:
        t = t.view(torch.int16)
    elif code == DTYPE_BOOL:
        t = t.to(torch.uint8)
    data = t.numpy().astype(_CODE_TO_NUMPY[code], copy=False).tobytes()
    return data, list(tensor.shape), code


def decode(data: bytes, shape: Iterable[int], code: int) -> torch.Tensor:
    """A new tensor (own memory, writable) from wire bytes."""
    code = code or DTYPE_FLOAT32
    if code not in _CODE_TO_NUMPY:
        raise ValueError(f"unknown dtype code {code} on the wire")
    shape = [int(d) for d in shape]
    array = np.frombuffer(data, dtype=_CODE_TO_NUMPY[code]).astype(_CODE_TO_NUMPY[code].newbyteorder("="))
    expected = int(np.prod(shape)) if shape else 1
    if array.size != expected:
        raise ValueError(f"{len(data)} bytes do not make a {torch_dtype(code)} tensor of shape {shape}")
    t = torch.from_numpy(array)
    if code == DTYPE_BFLOAT16:
        t = t.view(torch.bfloat16)
    elif code == DTYPE_BOOL:
        t = t.to(torch.bool)
    return t.reshape(shape)
