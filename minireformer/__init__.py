"""minireformer: the Reformer (Kitaev, Kaiser, Levskaya, ICLR 2020) built one mechanism at a time.

One module per mechanism, each readable top to bottom:

- ``hashing``: angular LSH by random rotation, ``h(x) = argmax([xR; -xR])``.
- ``scale``: the one switch between the quick (CPU, CI) and the full (GPU) configuration.
- ``plots`` / ``widgets``: the lessons' figures and interactive controls, as pure functions.
- ``exercises`` / ``solutions``: the lessons' "build it" checkers and their teaching solutions.
"""

__version__ = "0.1.0"
