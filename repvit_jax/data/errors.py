"""The one exception type for input-pipeline problems a user can cause and fix."""


class DataError(ValueError):
  """A bad data config, a missing or unprepared data set, or a batch size that cannot split.

  Raised with one message that says what was wrong and what to do. It subclasses
  `ValueError` so that callers which already catch bad values keep working.
  """
