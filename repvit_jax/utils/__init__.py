"""Helpers below every other package: tree paths (`treepath`), capturing C++ libraries'
stderr (`stderr`) and huge pages for glibc's malloc on CPU hosts (`host_memory`)."""
