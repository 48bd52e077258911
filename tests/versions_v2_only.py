"""Only version 2 of `versioned`: version 1 retired (too early, for the test)."""

from tests.versions_v2 import versioned_v2  # noqa: F401
