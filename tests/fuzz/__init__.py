"""The fuzzer: random valid model files (model_writer) and the properties archlint must keep
on them (harness). Run by tests/test_fuzz.py and benchmarks/fuzz.py."""
