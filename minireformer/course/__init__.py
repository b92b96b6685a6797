"""What the lessons show: ``lab`` (their small experiments), ``plots`` (one function per figure; it only draws),
``widgets`` (controls around the data and its figure), ``exercises`` and ``checking`` (the "build it" steps and the
checker that names a learner's mistake) and ``solutions`` (their teaching solutions)."""
