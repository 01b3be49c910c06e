"""A run folder's results, read and summarized: the results table, condition settings, statistics,
tables and figures. Shared by the callbacks (TensorBoard at predict end) and the report, which
sit above it; it imports neither."""
