"""The optional native accelerator (`logagent/_speedups.c`, issue 11). Metadata and packages are in pyproject.toml.

`optional=True`: a machine without a C compiler or Python headers still installs logagent, which then runs its
pure-Python paths (the reference the accelerator is tested against, tests/test_speedups.py).
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("logagent._speedups", ["logagent/_speedups.c"], depends=["logagent/_criblock.h"],
                             optional=True, extra_compile_args=["-O2"])])
