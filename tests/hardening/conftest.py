"""Hypothesis profiles for the hardening suite.

`ci` (the default, what `make test` runs) tries a few examples per model, derandomized so that a
run is reproducible; `fuzz` (`make fuzz`, or VITLAB_FUZZ_PROFILE=fuzz) tries many more, with fresh
random draws each run; VITLAB_FUZZ_EXAMPLES=N sets the number of examples of either. The examples
are generated; nothing here is a fixed list of cases.
"""

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", max_examples=2, deadline=None, derandomize=True, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)  # fmt: skip
settings.register_profile(
    "fuzz", max_examples=40, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)  # fmt: skip
settings.load_profile(os.environ.get("VITLAB_FUZZ_PROFILE", "ci"))
if os.environ.get("VITLAB_FUZZ_EXAMPLES"):
    settings.register_profile(
        "chosen",
        settings.get_profile(settings.get_current_profile_name()),
        max_examples=int(os.environ["VITLAB_FUZZ_EXAMPLES"]),
    )
    settings.load_profile("chosen")
