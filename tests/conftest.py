"""Shared pytest setup: hypothesis profiles, chosen with the HYPOTHESIS_PROFILE environment variable.

- ci (default): no deadline (interpreting a graph takes a variable while on a loaded machine),
  200 examples per property, so the whole suite stays quick on two cores; under CI (CI=true)
  the examples are derandomized, so a landing never hinges on a lucky draw, while every
  developer's local run explores new ones;
- dev: fewer examples, for a fast edit-test loop;
- thorough: many examples, for a nightly run or after changing the IR or a pass.
"""

import os

from hypothesis import HealthCheck, settings

# Drawing a graph makes many small choices, and ops that do not fit are drawn again, which
# hypothesis may find slow or wasteful on the first examples; neither is a problem here.
_QUIET = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]

settings.register_profile(
    "ci",
    deadline=None,
    max_examples=200,
    suppress_health_check=_QUIET,
    print_blob=True,
    derandomize=os.environ.get("CI") == "true",
)
settings.register_profile("dev", deadline=None, max_examples=15, suppress_health_check=_QUIET)
settings.register_profile("thorough", deadline=None, max_examples=1000, suppress_health_check=_QUIET)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# Compiled objects go to a cache of this test session, not the user's ~/.cache/kiln.
if "KILN_CACHE_DIR" not in os.environ:
    import tempfile

    os.environ["KILN_CACHE_DIR"] = tempfile.mkdtemp(prefix="kiln-test-cache-")
