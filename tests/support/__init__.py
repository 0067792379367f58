"""Code the test suites share."""
