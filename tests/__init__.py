"""otad's trial test suite."""
