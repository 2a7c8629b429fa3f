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


# int8 blockwise (docs/protocol.md): one int8 code per value, one float32 scale per
# block of `block` values; each decoded value is within scale / 2 of the original.
def encode_int8_blockwise(tensor: torch.Tensor, block: int) -> Tuple[bytes, list, list]:
    """(codes, shape, scales) of a floating tensor, or ValueError if it holds NaN or
    infinity (which have no encoding)."""
    if block < 1:
        raise ValueError("int8 blockwise block size must be at least 1")
    x = tensor.detach().to("cpu", torch.float32).contiguous().numpy().reshape(-1)
    if not np.all(np.isfinite(x)):
        raise ValueError("NaN and infinity have no int8 blockwise encoding")
    blocks = -(-x.size // block)
    padded = np.zeros(blocks * block, dtype=np.float64)
    padded[:x.size] = x
    padded = padded.reshape(blocks, block)
    exact = np.abs(padded).max(axis=1) / 127.0 if blocks else np.zeros(0)
    scales = exact.astype(np.float32)
    low = scales.astype(np.float64) < exact  # rounded down: take the next float32 up
    scales[low] = np.nextafter(scales[low], np.float32(np.inf))
    safe = np.where(scales > 0, scales, 1).astype(np.float64)[:, None]
    codes = np.clip(np.rint(padded / safe), -127, 127).astype(np.int8).reshape(-1)[:x.size]
    return codes.tobytes(), list(tensor.shape), scales.tolist()


def decode_int8_blockwise(data: bytes, shape: Iterable[int], scales: Iterable[float], block: int) -> torch.Tensor:
    """A float32 tensor from int8 blockwise codes; ValueError if they do not fit."""
    shape = [int(d) for d in shape]
    codes = np.frombuffer(data, dtype=np.int8).astype(np.float64)
    expected = int(np.prod(shape)) if shape else 1
    scales = np.asarray(list(scales), dtype=np.float64)
    if block < 1 or codes.size != expected or scales.size != -(-expected // block):
        raise ValueError(f"int8 blockwise data does not fit shape {shape} in blocks of {block}")
    values = codes * np.repeat(scales, block)[:expected]
    return torch.from_numpy(values.astype(np.float32)).reshape(shape)
