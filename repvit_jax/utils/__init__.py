"""Helpers below every other package: tree paths (`treepath`) and capturing C++ libraries'
stderr (`stderr`)."""
