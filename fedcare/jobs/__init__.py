"""Ready-made jobs on the shipped medical data sets."""
