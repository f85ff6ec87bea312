"""Digests of the arrays in a checkpoint, so that bit rot is found at restore, not trained on.

A checkpoint step records `{leaf path: 'dtype shape digest'}` in its Orbax metadata (the
Checkpointer's `custom_metadata`, Orbax's own format unchanged). The digest is two 32-bit
position-weighted sums of the array's bit patterns:

    h1 = sum_i  w_i * (i * 0x9E3779B1 | 1)          (mod 2**32)
    h2 = sum_i (w_i ^ i * 0x85EBCA6B) * 0x27D4EB2F  (mod 2**32)

with w_i the i-th element's bits as an unsigned integer (row-major order). Flipping any bit of
one element changes both sums (each multiplier is odd), and it is a sum, so it does not depend
on how the array is sharded: a non-addressable (multi-host) array is digested under `jit` with
the same arithmetic, every process taking part, and gets the same digest as its numpy copy.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Dict, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from repvit_jax.utils.treepath import path_str

# Stored per checkpoint step under this key of the step's custom metadata.
METADATA_KEY = 'digests'
SPEC_KEY = 'spec_digest'

_INDEX_MUL = 0x9E3779B1
_INDEX_MIX = 0x85EBCA6B
_WORD_MUL = 0x27D4EB2F


class DigestMismatch(ValueError):
  """A restored array differs from the one saved (the checkpoint's files changed on disk)."""


def _as_words(x, xp):
  """The elements' bit patterns as a flat uint32 vector (numpy or jax.numpy `xp`)."""
  if x.dtype == bool:
    x = x.astype(xp.uint8)
  unsigned = {1: xp.uint8, 2: xp.uint16, 4: xp.uint32, 8: xp.uint32}[x.dtype.itemsize]
  if xp is np:
    bits = np.ascontiguousarray(x).view(unsigned)
  else:
    bits = jax.lax.bitcast_convert_type(x, unsigned)
  return bits.reshape(-1).astype(xp.uint32)


def _sums(x, xp):
  words = _as_words(x, xp)
  index = xp.arange(words.shape[0], dtype=xp.uint32)
  h1 = xp.sum(words * (index * xp.uint32(_INDEX_MUL) | xp.uint32(1)), dtype=xp.uint32)
  h2 = xp.sum((words ^ index * xp.uint32(_INDEX_MIX)) * xp.uint32(_WORD_MUL), dtype=xp.uint32)
  return h1, h2


_jitted_sums = jax.jit(lambda x: _sums(x, jnp))


def array_digest(x) -> str:
  """'float32 (192, 576) 1a2b3c4d5e6f7a8b' for an array (numpy, jax, possibly multi-host).

  A PRNG key is digested as its key data (uint32), the form a checkpoint read without a
  target returns.
  """
  if jax.dtypes.issubdtype(getattr(x, 'dtype', np.float32), jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    h1, h2 = (int(np.asarray(h.addressable_data(0))) for h in _jitted_sums(x))
    dtype = x.dtype
  else:
    x = np.asarray(jax.device_get(x))
    with np.errstate(over='ignore'):
      h1, h2 = (int(h) for h in _sums(x, np))
    dtype = x.dtype
  return f'{dtype} {tuple(np.shape(x))} {h1:08x}{h2:08x}'


def tree_digests(tree: Any) -> Dict[str, str]:
  """{leaf path: array_digest} for every array leaf of a pytree (python scalars skipped)."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    if hasattr(leaf, 'dtype') and hasattr(leaf, 'shape'):
      out[path_str(path)] = array_digest(leaf)
  return out


def spec_digest(spec_json: Any) -> str:
  """sha256 (first 16 hex digits) of a JSON-able model record, keys sorted."""
  text = json.dumps(spec_json, sort_keys=True, separators=(',', ':'))
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def verify(tree: Any, stored: Mapping[str, str], where: str) -> None:
  """Raises DigestMismatch naming the leaves of `tree` whose digest differs from `stored`.

  Leaves `stored` does not list, and leaves restored in another dtype than the one saved (a
  deliberate cast), are not compared.
  """
  bad = []
  for path, digest in tree_digests(tree).items():
    want = stored.get(path)
    if want is None or want.split(' ', 1)[0] != digest.split(' ', 1)[0]:
      continue
    if want != digest:
      bad.append(path)
  if bad:
    more = f' and {len(bad) - 1} more' if len(bad) > 1 else ''
    raise DigestMismatch(f'{where}: the data of {bad[0]}{more} changed on disk since it was '
                         'saved (checksum mismatch)')


__all__ = ['array_digest', 'tree_digests', 'spec_digest', 'verify', 'DigestMismatch',
           'METADATA_KEY', 'SPEC_KEY']
