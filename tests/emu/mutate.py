#!/usr/bin/env python3
"""Writes a deliberately broken copy of the crate's REAL kernels (a mutation test of the
emulated driver's checkers on the code that matters, beside negative/broken.cu):

    mutate.py KERNEL_DIR OUT_DIR MUTATION

MUTATION:
  barrier  remove the __syncthreads between the per-warp partial sums and their reduction
           in rr_partials (kernels/project.cu): the race mode must report a data race
  oob      let the scalar tail loop of rr_apply run one element past its chunk
           (`e < hi` -> `e <= hi`): the address mode must report a heap-buffer-overflow
Fails loudly when the pattern is no longer in the source (update the pattern with it).
"""
import os
import re
import shutil
import sys

src, out, mutation = sys.argv[1:4]
shutil.rmtree(out, ignore_errors=True)
shutil.copytree(src, out)
path = os.path.join(out, "project.cu")
text = open(path).read()
if mutation == "barrier":
    pat = re.compile(r"(if \(lane == 0\) red\[warp \* RR_MAX_STRIDE \+ s\] = r;\n\s*\}\n)\s*__syncthreads\(\);\n")
elif mutation == "oob":
    pat = re.compile(r"(for \(rr_u64 e = lo \+ threadIdx\.x; e )<( hi; e \+= RR_THREADS\))")
else:
    sys.exit(f"mutate.py: unknown mutation {mutation}")
new, n = pat.subn(lambda m: m.group(1) + ("" if mutation == "barrier" else "<=" + m.group(2)), text, count=1)
if n != 1:
    sys.exit(f"mutate.py: the {mutation} pattern is not in {src}/project.cu any more: update tests/emu/mutate.py")
open(path, "w").write(new)
print(f"mutation {mutation}: {path}")
