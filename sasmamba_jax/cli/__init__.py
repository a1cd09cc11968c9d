"""Every command line, with one way to parse flags and one error path."""
