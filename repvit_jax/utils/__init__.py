"""Helpers below every other package: tree paths (`treepath`), capturing C++ libraries'
stderr (`stderr`) and glibc's handling of freed host memory (`host_memory`)."""
