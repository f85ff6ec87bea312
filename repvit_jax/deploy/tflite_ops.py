"""Post-conversion edits of a TFLite flatbuffer: GELU as TFLite's one GELU op.

TFLite has a builtin GELU (erf form) that XNNPACK runs as one kernel, but the converter never
emits it for a JAX model: `jax2tf` hands it StableHLO, where GELU is already a chain of
elementwise ops. In the select-free form `export` traces (`deploy.gelu`) that chain is
about 20 XNNPACK passes over the MLP's widest tensor, a large share of a ViT's TFLite time
(figures: benchmarks/README.md). The export traces that form inside the named scope
`gelu.GELU_SCOPE`, which the converter keeps in the names of the tensors it produces,
and `fuse_gelu` replaces each such chain by one GELU op.

A chain is replaced only when its ops are all elementwise ops whose output names lie wholly in
the scope, it reads exactly one tensor that is neither its own nor a constant (the GELU's
input), and exactly one of its tensors is read outside it (the GELU's output). Anything else
(a chain the converter merged with its neighbours) is left as it was: the select-free chain
computes the same GELU, more slowly.
"""

from __future__ import annotations

from typing import Dict, List, Set, Tuple

from repvit_jax.deploy.gelu import GELU_SCOPE

# The ops the select-free GELU converts to (deploy/gelu.py): anything else in a marked
# chain means the converter merged it with other work.
_ELEMENTWISE = ('ABS', 'ADD', 'SUB', 'MUL', 'DIV', 'EXP', 'NEG', 'SQUARE')

_TFLITE_FILE_IDENTIFIER = b'TFL3'


def _schema():
  """The flatbuffer schema's Python classes: LiteRT's, else the TensorFlow converter's."""
  try:
    from ai_edge_litert import schema_py_generated  # pylint: disable=import-outside-toplevel
  except ImportError:
    from tensorflow.lite.python import schema_py_generated  # pylint: disable=import-outside-toplevel
  return schema_py_generated


def _builtin_code(operator_code) -> int:
  # Codes above 127 live in `builtinCode`; older files keep small ones in the deprecated field.
  return max(operator_code.builtinCode, operator_code.deprecatedBuiltinCode)


def _in_scope(name: bytes) -> bool:
  """Whether every location the converter fused into this tensor's name is in the scope."""
  marker = f'/{GELU_SCOPE}/'
  return all(marker in part for part in name.decode('utf-8', 'replace').split(';'))


def _chains(subgraph, marked: List[int], constant: Set[int]) -> List[List[int]]:
  """The marked ops grouped into chains: connected through the non-constant tensors one op
  writes and another reads (constants such as the polynomial's are shared between chains)."""
  parent = {op: op for op in marked}

  def find(op):
    while parent[op] != op:
      parent[op] = parent[parent[op]]
      op = parent[op]
    return op

  writer = {}
  for op in marked:
    for tensor in subgraph.operators[op].outputs:
      writer[tensor] = op
  for op in marked:
    for tensor in subgraph.operators[op].inputs:
      if tensor in writer and tensor not in constant:
        parent[find(op)] = find(writer[tensor])
  groups: Dict[int, List[int]] = {}
  for op in marked:
    groups.setdefault(find(op), []).append(op)
  return list(groups.values())


def _chain_ends(subgraph, chain: List[int], constant: Set[int],
                readers: Dict[int, Set[int]]) -> Tuple[int, int] | None:
  """(input tensor, output tensor) of a chain that computes f(x) of one tensor, else None."""
  members = set(chain)
  written = {t for op in chain for t in subgraph.operators[op].outputs}
  read = {t for op in chain for t in subgraph.operators[op].inputs if t >= 0}
  inputs = read - written - constant
  graph_outputs = set(subgraph.outputs)
  outputs = {t for t in written
             if t in graph_outputs or readers.get(t, set()) - members}
  if len(inputs) != 1 or len(outputs) != 1:
    return None
  (x,), (y,) = inputs, outputs
  if list(subgraph.tensors[x].shape) != list(subgraph.tensors[y].shape):
    return None
  return x, y


def _gelu_code_index(model, schema) -> int:
  gelu = schema.BuiltinOperator.GELU
  for index, code in enumerate(model.operatorCodes):
    if _builtin_code(code) == gelu:
      return index
  code = schema.OperatorCodeT()
  code.builtinCode = gelu
  code.deprecatedBuiltinCode = min(gelu, schema.BuiltinOperator.PLACEHOLDER_FOR_GREATER_OP_CODES)
  code.version = 1
  model.operatorCodes.append(code)
  return len(model.operatorCodes) - 1


def _drop_unused_tensors(subgraph, signatures) -> None:
  """Removes the tensors no op, input or output refers to any more, renumbering the rest
  (in the ops, the subgraph's inputs and outputs and its `signatures`' tensor maps)."""
  used = set(subgraph.inputs) | set(subgraph.outputs)
  for op in subgraph.operators:
    used.update(t for t in op.inputs if t >= 0)
    used.update(op.outputs)
    used.update(op.intermediates if op.intermediates is not None else ())
  keep = sorted(used)
  new_index = {old: new for new, old in enumerate(keep)}
  remap = lambda tensors: [new_index[t] if t >= 0 else t for t in tensors]  # -1: no input
  subgraph.tensors = [subgraph.tensors[t] for t in keep]
  subgraph.inputs = remap(subgraph.inputs)
  subgraph.outputs = remap(subgraph.outputs)
  for op in subgraph.operators:
    op.inputs = remap(op.inputs)
    op.outputs = remap(op.outputs)
    if op.intermediates is not None:
      op.intermediates = remap(op.intermediates)
  for signature in signatures:
    for entry in (signature.inputs or []) + (signature.outputs or []):
      entry.tensorIndex = new_index[entry.tensorIndex]


def op_names(payload: bytes) -> List[str]:
  """The builtin op names of a TFLite flatbuffer's first subgraph, in execution order."""
  schema = _schema()
  model = schema.ModelT.InitFromPackedBuf(bytearray(payload), 0)
  names = _op_names(schema)
  return [names.get(_builtin_code(model.operatorCodes[op.opcodeIndex]), 'CUSTOM')
          for op in model.subgraphs[0].operators]


def _op_names(schema) -> Dict[int, str]:
  return {getattr(schema.BuiltinOperator, k): k for k in dir(schema.BuiltinOperator)
          if not k.startswith('_')}


def fuse_gelu(payload: bytes) -> Tuple[bytes, int]:
  """Replaces every GELU chain traced in `gelu.GELU_SCOPE` by TFLite's GELU op.

  Args:
    payload: a TFLite flatbuffer, as `tf.lite.TFLiteConverter.convert` returns it.

  Returns:
    (the edited flatbuffer, how many chains were replaced). With no chain to replace, the
    payload comes back unchanged.
  """
  import flatbuffers  # pylint: disable=import-outside-toplevel

  schema = _schema()
  model = schema.ModelT.InitFromPackedBuf(bytearray(payload), 0)
  names = _op_names(schema)
  replaced = 0
  for subgraph_index, subgraph in enumerate(model.subgraphs):
    constant = {i for i, tensor in enumerate(subgraph.tensors)
                if tensor.buffer > 0 and model.buffers[tensor.buffer].data is not None
                and len(model.buffers[tensor.buffer].data)}
    readers: Dict[int, Set[int]] = {}
    for index, op in enumerate(subgraph.operators):
      for tensor in op.inputs:
        readers.setdefault(tensor, set()).add(index)
    marked = [
        index for index, op in enumerate(subgraph.operators)
        if names.get(_builtin_code(model.operatorCodes[op.opcodeIndex])) in _ELEMENTWISE
        and all(_in_scope(subgraph.tensors[t].name) for t in op.outputs)]
    drop: Set[int] = set()
    for chain in _chains(subgraph, marked, constant):
      ends = _chain_ends(subgraph, chain, constant, readers)
      if ends is None:
        continue
      gelu = schema.OperatorT()
      gelu.opcodeIndex = _gelu_code_index(model, schema)
      gelu.inputs, gelu.outputs = [ends[0]], [ends[1]]
      gelu.builtinOptionsType = schema.BuiltinOptions.GeluOptions
      gelu.builtinOptions = schema.GeluOptionsT()
      gelu.builtinOptions.approximate = False
      # In the last op's place: the input is written before the chain's first op, and the
      # output's readers come after its last.
      last = max(chain)
      subgraph.operators[last] = gelu
      drop.update(op for op in chain if op != last)
      replaced += 1
    if drop:
      subgraph.operators = [op for i, op in enumerate(subgraph.operators) if i not in drop]
      _drop_unused_tensors(subgraph, [s for s in model.signatureDefs or []
                                      if s.subgraphIndex == subgraph_index])
  if not replaced:
    return payload, 0
  builder = flatbuffers.Builder(len(payload) + 1024)
  builder.Finish(model.Pack(builder), file_identifier=_TFLITE_FILE_IDENTIFIER)
  return bytes(builder.Output()), replaced


__all__ = ['fuse_gelu', 'op_names']
