"""png_diff.py NAME A.png B.png: prints the largest and mean pixel difference of two images
(the GPU check: the same run on the CPU and the GPU, or eager and CUDA graphs; rounding
differs, the picture must not)."""

import sys

import numpy as np
from PIL import Image

name, a, b = sys.argv[1:4]
x, y = (np.asarray(Image.open(p).convert("RGB"), dtype=np.int16) for p in (a, b))
if x.shape != y.shape:
    sys.exit(f"{name}: sizes differ, {x.shape} vs {y.shape}")
d = np.abs(x - y)
print(f"{name:<14} {x.shape[1]}x{x.shape[0]}  max diff {d.max():3d}  mean {d.mean():.3f} levels")
