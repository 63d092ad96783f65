"""The product's test toolkit: the mock server, `hybridgate check` suites and the pytest plugin."""
