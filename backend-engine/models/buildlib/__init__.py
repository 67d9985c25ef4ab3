"""Pieces of the model-repository build (see ../build.py).

Import this package only through build.py, which pins the numerical
environment (single-threaded BLAS, fixed CPU kernels) before numpy loads.
"""
