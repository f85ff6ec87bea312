"""Helpers below every other package: tree paths (`treepath`), loading config files
(`config_files`) and capturing C++ libraries' stderr (`stderr`)."""
