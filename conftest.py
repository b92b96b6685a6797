"""Loaded by pytest before anything else: the test run is the quick scale everywhere, and records no progress.

The lessons default to the quick scale everywhere (minireformer.training.scale); a ``MINIREFORMER_SCALE`` left in
the environment, say ``full`` from a GPU session, would mean hours of training under nbval and cells past its
timeout. So the README's test command runs every unit test and every lesson at the quick scale unless
``MINIREFORMER_SCALE=full`` asks for the paper's sizes. The kernels nbval starts inherit this environment.
"""

import os

if not os.environ.get("MINIREFORMER_SCALE", "").strip():
    os.environ["MINIREFORMER_SCALE"] = "quick"

# The exercises' checks remember each outcome for progress() (minireformer.course.checking.progress_file); a
# test run keeps its own record, in a fresh temporary folder, and never touches the learner's.
if "MINIREFORMER_PROGRESS" not in os.environ:
    import tempfile

    os.environ["MINIREFORMER_PROGRESS"] = os.path.join(tempfile.mkdtemp(prefix="minireformer-"), "progress.json")
