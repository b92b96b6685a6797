"""Loaded by pytest before anything else: the test run is the quick scale everywhere, and records no progress.

On a CUDA machine the lessons default to the full scale (minireformer.training.scale), which under nbval would mean
hours of training and cells past nbval's timeout. So the README's test command runs every unit test and
every lesson at the quick scale unless ``MINIREFORMER_SCALE=full`` asks for the paper's sizes. The
kernels nbval starts inherit this environment; ``jupyter lab`` outside pytest still picks by the device.
"""

import os

if not os.environ.get("MINIREFORMER_SCALE", "").strip():
    os.environ["MINIREFORMER_SCALE"] = "quick"

# The exercises' checks remember each outcome for progress() (minireformer.course.checking.progress_file); a
# test run keeps its own record, in a fresh temporary folder, and never touches the learner's.
if "MINIREFORMER_PROGRESS" not in os.environ:
    import tempfile

    os.environ["MINIREFORMER_PROGRESS"] = os.path.join(tempfile.mkdtemp(prefix="minireformer-"), "progress.json")
