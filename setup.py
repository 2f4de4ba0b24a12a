"""The one thing pyproject.toml cannot say: the optional C fast path of the blocking loop.

`optional=True`: where it cannot be built (no compiler), racebench installs without it and
runs the same loop in Python (racebench/engine/_blocking_loop.c says why it exists).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "racebench.engine._blocking_loop",
            ["racebench/engine/_blocking_loop.c"],
            optional=True,
        )
    ]
)
