"""The product's test toolkit: mock servers (`mocks/`), `hybridgate check` suites (`check/`), the pytest
plugin (`pytest_plugin`), its spend cap on paid calls (`spend/`), real processes on loopback (`procs`), and
mock-versus-real drift (`drift`).
"""
