"""Fuzzing of the parsers of untrusted input: targets (:mod:`tests.fuzz.targets`), the
atheris runner (:mod:`tests.fuzz.run`) and the crashers kept as regression cases
(``tests/fuzz/regressions/<target>/<hash>``)."""
