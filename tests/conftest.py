"""Shared test configuration: Hypothesis profiles.

The default profile is quick for the edit-test loop; ``ci`` (selected by
``HYPOTHESIS_PROFILE=ci``, which ``.ci/run`` sets) explores far more cases.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

# too_slow measures the machine, not the code: on a loaded machine it failed a
# property test that passes on every rerun, so neither profile lets it.
# print_blob: a failure that does not come back on a rerun can still be replayed from its blob.
settings.register_profile(
    "dev", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
# ci: twice Hypothesis's own default, three times dev; with the stateful tests' own caps it keeps the
# whole run (install included) well inside CI's ten minutes on a shared 2-core machine.
settings.register_profile(
    "ci",
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))
