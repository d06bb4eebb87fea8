"""The test suite, a package: helpers import as `tests.NAME`; fixtures shared by several files
live in conftest.py."""
