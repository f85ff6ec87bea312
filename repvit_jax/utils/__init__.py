"""Helpers below every other package: tree paths (`treepath`), capturing C++ libraries'
stderr (`stderr`) and the malloc the trainer restarts with on CPU hosts (`host_memory`)."""
