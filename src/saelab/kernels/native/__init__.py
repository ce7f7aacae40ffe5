"""Hand-written CPU kernels for the sparse path's row passes, built with the system's C++ compiler.

  rows.cpp  the kernels (C ABI): the fused bias + top-k + AuxK selection, top-k among a column
            subset, the stable latent sort, segment sums and the fused dots-and-sums of the decoder
            backward, the decoder gradient's projection off each row
  build.py  compile once per machine into saelab's cache folder, load with ctypes
  ops.py    typed entry points (`usable` says whether they run here; callers keep a torch path)
Nothing here is required: without a compiler, or with SAELAB_NATIVE=0, the torch operators run.
"""
