"""The MARS method in plain Python: the loop of rounds and its report."""
