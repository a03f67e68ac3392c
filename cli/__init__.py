"""The ``creme`` command line: the composition root of the gateway, the workers and the tools."""
