"""The kernels of a compiled XLA program, read from its optimized HLO text.

Each top-level operation of the entry computation that is not bookkeeping
(parameters, tuples, bitcasts, constants) is one kernel launch on a GPU: a
fusion, a library call, a copy. Its memory traffic is estimated as the bytes
of its operands plus the bytes of its result, the way XLA's own cost analysis
charges a fusion; caches can only make the real traffic smaller.
"""

from __future__ import annotations

import dataclasses
import re

_NOT_KERNELS = {"parameter", "get-tuple-element", "tuple", "constant",
                "bitcast"}
_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2,
          "u16": 2, "f32": 4, "s32": 4, "u32": 4, "f64": 8, "s64": 8,
          "u64": 8, "c64": 8, "c128": 16}
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%(\S+) = ")


@dataclasses.dataclass(frozen=True)
class Kernel:
  """One top-level operation: its opcode, result and estimated traffic, and
  the kernels whose results it reads."""
  opcode: str
  shape: str  # the result, as HLO prints it
  bytes_in: int
  bytes_out: int
  source: str  # the JAX operation it came from, when XLA recorded it
  name: str = ""
  inputs: tuple[str, ...] = ()  # names of the kernels it waits for

  @property
  def bytes(self) -> int:
    return self.bytes_in + self.bytes_out


def shape_bytes(shape: str) -> int:
  """Bytes of an HLO shape such as ``f32[8,4]{1,0}`` or a tuple of them."""
  total = 0
  for dtype, dims in re.findall(r"\b([a-z]+\d*)\[([\d,]*)\]", shape):
    size = _BYTES.get(dtype, 0)
    for d in filter(None, dims.split(",")):
      size *= int(d)
    total += size
  return total


def _closing(text: str, start: int) -> int:
  """Index just past the bracket that closes the one at ``text[start]``."""
  depth = 0
  for i in range(start, len(text)):
    depth += {"(": 1, ")": -1}.get(text[i], 0)
    if depth == 0:
      return i + 1
  raise ValueError(f"unbalanced brackets in HLO line: {text[:80]!r}")


def kernels(hlo_text: str) -> list[Kernel]:
  """The kernels of the entry computation, in program order."""
  if "\nENTRY" not in hlo_text:
    raise ValueError("not an HLO module: no ENTRY computation")
  sizes: dict[str, int] = {}
  producers: dict[str, frozenset[str]] = {}  # the kernels behind a value
  found = []
  for line in hlo_text[hlo_text.index("\nENTRY"):].splitlines()[1:]:
    match = _INSTRUCTION.match(line)
    if not match:
      continue
    rest = line[match.end():]
    shape_end = _closing(rest, 0) if rest.startswith("(") else rest.index(" ")
    shape = rest[:shape_end]
    opcode_match = re.match(r"\s*([a-z][\w-]*)\(", rest[shape_end:])
    if not opcode_match:
      continue
    opcode = opcode_match[1]
    name = match[1]
    sizes[name] = shape_bytes(shape)
    args_start = shape_end + opcode_match.end() - 1
    args_end = _closing(rest, args_start)
    operands = re.findall(r"%([^\s,()]+)", rest[args_start:args_end])
    inputs = frozenset().union(*(producers.get(o, ()) for o in operands))
    if opcode in _NOT_KERNELS:
      producers[name] = inputs
      continue
    producers[name] = frozenset([name])
    source = re.search(r'op_name="([^"]*)"', rest[args_end:])
    found.append(Kernel(opcode, shape,
                        sum(sizes.get(o, 0) for o in operands),
                        sizes[name], source[1] if source else "", name,
                        tuple(sorted(inputs))))
  return found


def longest_chain(kernels: list[Kernel]) -> list[Kernel]:
  """The longest run of kernels each of which waits for the one before.

  However many kernels may run at the same time, a program takes at least
  the time of this chain. ``kernels`` in program order, as ``kernels``
  returns them (every kernel after those it waits for).
  """
  best: dict[str, tuple[int, str | None]] = {}  # length, previous kernel
  for k in kernels:
    before = max(k.inputs, key=lambda n: best[n][0], default=None)
    best[k.name] = (1 + (best[before][0] if before else 0), before)
  if not best:
    return []
  by_name = {k.name: k for k in kernels}
  name = max(best, key=lambda n: best[n][0])
  chain = []
  while name is not None:
    chain.append(by_name[name])
    name = best[name][1]
  return chain[::-1]
