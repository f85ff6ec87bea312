"""Reading (and writing) PyTorch-style state dicts as flat {name: numpy array} mappings.

`.safetensors` and `.npz` are read with NumPy alone (safetensors is a little-endian u64 header
length, a JSON header and one raw buffer, parsed here); `.pth` / `.pt` / `.bin` / `.ckpt`
need PyTorch, imported only when such a file is read. Training checkpoints are unwrapped
(`{"model": ...}`, `{"state_dict": ...}`, ...) and the `module.` prefix of DataParallel is
stripped, so every reader returns the bare state dict.
"""

from __future__ import annotations

import json
import os
import struct
import zipfile
from typing import Any, Dict, Mapping

import numpy as np

StateDict = Dict[str, np.ndarray]

TORCH_SUFFIXES = ('.pth', '.pt', '.bin', '.ckpt', '.tar')
# Keys under which training scripts nest the weights (MAE/MAE-Lite/DeiT: 'model'; mmpretrain
# and Lightning: 'state_dict'); tried in this order.
WRAPPER_KEYS = ('model', 'state_dict', 'model_state', 'model_state_dict', 'module', 'net',
                'params')
# One prefix shared by every key is stripped when it is one of these.
STRIPPED_PREFIXES = ('module.', 'model.', '_orig_mod.')

_SAFETENSORS_DTYPES = {
    'F64': np.float64, 'F32': np.float32, 'F16': np.float16, 'I64': np.int64,
    'I32': np.int32, 'I16': np.int16, 'I8': np.int8, 'U8': np.uint8, 'U16': np.uint16,
    'U32': np.uint32, 'U64': np.uint64, 'BOOL': np.bool_,
}


def read_state_dict(path: str) -> StateDict:
  """The state dict stored in `path`, unwrapped and with DataParallel prefixes stripped.

  Args:
    path: a `.safetensors`, `.npz`, or PyTorch pickle (`.pth`, `.pt`, `.bin`, `.ckpt`,
      `.pth.tar`) file.

  Returns:
    {key: numpy array}, keys as PyTorch names them ('blocks.0.attn.qkv.weight'). bfloat16
    tensors come back as float32.

  Raises:
    FileNotFoundError: no such file.
    ValueError: an unknown suffix, a malformed file, or no state dict inside.
    ImportError: a PyTorch file and torch is not installed.
  """
  path = os.path.expanduser(os.fspath(path))
  if not os.path.isfile(path):
    raise FileNotFoundError(f'checkpoint file {path} not found')
  lower = path.lower()
  if lower.endswith('.safetensors'):
    raw: Any = read_safetensors(path)
  elif lower.endswith('.npz'):
    try:
      with np.load(path, allow_pickle=False) as archive:
        raw = {key: np.asarray(archive[key]) for key in archive.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
      # np.load takes a file that is not a zip archive for a pickle, and says only that.
      why = ('not a zip archive' if 'pickled' in str(e) or not zipfile.is_zipfile(path)
             else f'{e.__class__.__name__}: {str(e).splitlines()[0] if str(e) else ""}')
      raise ValueError(f'{path} is not a readable .npz archive ({why}); write one with '
                       'numpy.savez') from None
  elif lower.endswith(TORCH_SUFFIXES):
    raw = _read_torch(path)
  else:
    raise ValueError(f'{path}: unknown checkpoint format; expected .safetensors, .npz or a '
                     f'PyTorch file ({", ".join(TORCH_SUFFIXES)})')
  return normalize_state_dict(raw, where=path)


def normalize_state_dict(raw: Any, *, where: str = 'checkpoint') -> StateDict:
  """Unwraps a training checkpoint to its state dict and strips one shared wrapper prefix.

  Wrappers: a mapping whose value under 'model', 'state_dict', ... is itself a mapping of
  arrays. Prefixes: 'module.' (DataParallel), 'model.' (MAE-Lite, Lightning), '_orig_mod.'
  (torch.compile), applied repeatedly while *every* key has the prefix.
  """
  state = raw
  for _ in range(3):  # e.g. {'state_dict': {'model': {...}}}
    if not isinstance(state, Mapping) or _is_state_dict(state):
      break
    for key in WRAPPER_KEYS:
      if isinstance(state.get(key), Mapping):
        state = state[key]
        break
    else:
      break
  if not isinstance(state, Mapping) or not _is_state_dict(state):
    keys = sorted(map(str, raw))[:10] if isinstance(raw, Mapping) else type(raw).__name__
    raise ValueError(f'{where}: no state dict found (top-level keys: {keys}); expected a '
                     f'mapping of arrays, possibly under one of {WRAPPER_KEYS}')
  arrays = {str(k): _to_numpy(v) for k, v in state.items() if _is_array(v)}
  changed = True
  while changed and arrays:
    changed = False
    for prefix in STRIPPED_PREFIXES:
      if all(k.startswith(prefix) for k in arrays):
        arrays = {k[len(prefix):]: v for k, v in arrays.items()}
        changed = True
  return arrays


def read_safetensors(path: str) -> StateDict:
  """Parses a .safetensors file with NumPy (no dependency); metadata is ignored."""
  with open(path, 'rb') as f:
    head = f.read(8)
    if len(head) != 8:
      raise ValueError(f'{path}: not a safetensors file (shorter than 8 bytes)')
    (header_len,) = struct.unpack('<Q', head)
    if header_len > 100_000_000:
      raise ValueError(f'{path}: not a safetensors file (header length {header_len})')
    try:
      header = json.loads(f.read(header_len).decode('utf-8'))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
      raise ValueError(f'{path}: not a safetensors file ({e})') from None
    buffer = f.read()
  out = {}
  for name, info in header.items():
    if name == '__metadata__':
      continue
    dtype, shape = info['dtype'], tuple(info['shape'])
    start, end = info['data_offsets']
    if end > len(buffer) or start > end:
      raise ValueError(f'{path}: tensor {name} lies outside the file (truncated?)')
    chunk = buffer[start:end]
    if dtype == 'BF16':
      bits = np.frombuffer(chunk, dtype='<u2').astype(np.uint32) << 16
      array = bits.view(np.float32)
    elif dtype in _SAFETENSORS_DTYPES:
      array = np.frombuffer(chunk, dtype=np.dtype(_SAFETENSORS_DTYPES[dtype]).newbyteorder('<'))
    else:
      raise ValueError(f'{path}: tensor {name} has unsupported dtype {dtype}')
    out[name] = array.reshape(shape).astype(array.dtype.newbyteorder('='))
  return out


def write_safetensors(path: str, state_dict: Mapping[str, Any],
                      metadata: Mapping[str, str] | None = None) -> str:
  """Writes {name: array} as a .safetensors file readable by the `safetensors` package."""
  names = {np.dtype(v).name: k for k, v in _SAFETENSORS_DTYPES.items()}
  header: Dict[str, Any] = {}
  if metadata:
    header['__metadata__'] = {str(k): str(v) for k, v in metadata.items()}
  chunks, offset = [], 0
  for name in sorted(state_dict):
    array = np.ascontiguousarray(np.asarray(state_dict[name]))
    if array.dtype.name not in names:
      raise ValueError(f'{name}: dtype {array.dtype} cannot be written to safetensors')
    data = array.astype(array.dtype.newbyteorder('<')).tobytes()
    header[name] = {'dtype': names[array.dtype.name], 'shape': list(array.shape),
                    'data_offsets': [offset, offset + len(data)]}
    chunks.append(data)
    offset += len(data)
  encoded = json.dumps(header, separators=(',', ':')).encode('utf-8')
  encoded += b' ' * (-len(encoded) % 8)  # the format aligns the buffer to 8 bytes
  tmp = f'{path}.tmp'
  with open(tmp, 'wb') as f:
    f.write(struct.pack('<Q', len(encoded)))
    f.write(encoded)
    for data in chunks:
      f.write(data)
  os.replace(tmp, path)
  return path


def _read_torch(path: str) -> Any:
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise ImportError(f'{path} is a PyTorch file and reading it needs torch (pip install '
                      'torch, CPU build is enough), or convert it to .safetensors first') from None
  try:
    return torch.load(path, map_location='cpu', weights_only=True)
  except Exception:  # pylint: disable=broad-except
    pass
  try:
    # Older training checkpoints pickle other objects (argparse namespaces, ...) beside the
    # weights; they are only trusted when the user hands them to us explicitly.
    return torch.load(path, map_location='cpu', weights_only=False)
  except Exception as e:  # pylint: disable=broad-except
    detail = str(e).strip().splitlines()[0] if str(e).strip() else ''
    raise ValueError(f'{path} is not a readable PyTorch checkpoint ({type(e).__name__}'
                     f'{": " + detail[:120] if detail else ""}); check the file (a complete '
                     'download?) or convert it to .safetensors') from None


def _is_array(value: Any) -> bool:
  return hasattr(value, 'shape') and hasattr(value, 'dtype')


def _is_state_dict(mapping: Mapping) -> bool:
  return bool(mapping) and any(_is_array(v) for v in mapping.values()) and all(
      _is_array(v) or not isinstance(v, Mapping) for v in mapping.values())


def _to_numpy(value: Any) -> np.ndarray:
  if type(value).__module__.startswith('torch'):
    value = value.detach().cpu()
    if str(value.dtype) == 'torch.bfloat16':
      value = value.float()
    return value.numpy()
  return np.asarray(value)


__all__ = ['read_state_dict', 'normalize_state_dict', 'read_safetensors', 'write_safetensors',
           'StateDict']
