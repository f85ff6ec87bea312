"""Image-folder data sets: root/<split>/<class>/<image file>, as torchvision's ImageFolder.

Classes are the sub-folders of the train split, sorted by name, so label i is the i-th
folder name; eval splits may hold a subset of them. Files are listed once, sorted, so the
example order (and so every run) is reproducible.
"""

from __future__ import annotations

import errno
import functools
import os
import sys

import numpy as np

from repvit_jax.data.errors import DataError

PREFIX = 'folder:'
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif')
EVAL_SPLIT_CANDIDATES = ('val', 'validation', 'test')
_WARNED: set = set()   # (root, per-split counts) already reported by this process


def _list_classes(split_dir: str) -> tuple[str, ...]:
  return tuple(sorted(e.name for e in os.scandir(split_dir)
                      if e.is_dir() and not e.name.startswith('.')))


def _not_a_file(entry: os.DirEntry) -> str | None:
  """Why an entry named like an image cannot be read as one, or None when it is a file."""
  try:
    if entry.is_file():
      return None
    if entry.is_dir():
      return 'is a directory'
  except OSError:
    pass
  try:
    os.stat(entry.path)
  except OSError as e:
    if e.errno == errno.ELOOP:
      return 'is a symbolic link loop'
    if entry.is_symlink():
      return f'is a symbolic link to {os.readlink(entry.path)!r}, which does not exist'
    return e.strerror or str(e)
  return 'is not a regular file'


@functools.lru_cache(maxsize=8)
def _list_files_cached(split_dir: str, classes: tuple[str, ...], stamp: tuple
                       ) -> tuple[tuple[str, ...], np.ndarray, tuple[tuple[str, str], ...]]:
  del stamp  # Part of the cache key only.
  paths, labels, broken = [], [], []
  for label, name in enumerate(classes):
    class_dir = os.path.join(split_dir, name)
    if not os.path.isdir(class_dir):
      continue
    entries = sorted((e for e in os.scandir(class_dir)
                      if e.name.lower().endswith(IMAGE_EXTENSIONS) and not e.name.startswith('.')),
                     key=lambda e: e.name)
    for entry in entries:
      why = _not_a_file(entry)
      if why:
        broken.append((entry.path, why))
      else:
        paths.append(entry.path)
        labels.append(label)
  return tuple(paths), np.asarray(labels, np.int32), tuple(broken)


def _list_files(split_dir: str, classes: tuple[str, ...]
                ) -> tuple[tuple[str, ...], np.ndarray, tuple[tuple[str, str], ...]]:
  """All image paths of a split and their int32 labels, class by class, sorted; and the
  entries named like images that are no readable file ((path, why): a dangling symbolic link,
  a link loop, a directory).

  Listing ImageNet takes seconds and the info, train and eval calls all need it, so it is
  cached; the folders' modification times are part of the key, so added files are seen.
  """
  stamp = tuple(os.stat(os.path.join(split_dir, c)).st_mtime_ns
                if os.path.isdir(os.path.join(split_dir, c)) else None for c in classes)
  return _list_files_cached(split_dir, classes, stamp)


@functools.lru_cache(maxsize=8)
def _unreadable_cached(paths: tuple[str, ...], stamp: tuple) -> tuple[str, ...]:
  """The files among `paths` that do not decode (every image decoded once, in parallel)."""
  del stamp  # Part of the cache key only.
  from repvit_jax.data import decode  # pylint: disable=g-import-not-at-top
  from repvit_jax.data._tf import tf  # pylint: disable=g-import-not-at-top
  from repvit_jax.data.split import whole_image  # pylint: disable=g-import-not-at-top

  def decodes(path):
    image = decode.decode_encoded_crop(tf.io.read_file(path), whole_image)
    return path, tf.size(image) > 0

  ds = tf.data.Dataset.from_tensor_slices(list(paths)).map(
      decodes, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.ignore_errors()     # an image that fails to decode is simply not yielded
  good = {p.decode() for p, _ in ds.as_numpy_iterator()}
  return tuple(p for p in paths if p not in good)


class FolderSource:
  """Source for `name='folder:/path'`.

  Args:
    name: 'folder:/path'.
    train_split: the split whose class folders define the labels (default 'train').
    eval_split: the split evaluated on (default: the first of val, validation, test).
    skip_corrupt: leave out files that do not read or decode (the train and eval splits are
      decoded once, when the source opens), with one warning line for both; otherwise a file
      that is no readable file (a dangling link, a directory) is one error when its split is
      listed, and an image that does not decode stops the pipeline, naming it.
  """

  def __init__(self, name: str, train_split: str | None = None, eval_split: str | None = None,
               skip_corrupt: bool = False):
    root = os.path.abspath(os.path.expanduser(name[len(PREFIX):]))
    self.name = name
    self.root = root
    layout = f'{root}/<split>/<class>/<image file>'
    if not os.path.isdir(root):
      raise DataError(f'image folder {root!r} (from data.name={name!r}) does not exist; '
                      f'expected the layout {layout}')
    splits = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith('.'))
    self.splits = tuple(splits)
    self.default_train_split = 'train'
    self.default_eval_split = next((s for s in EVAL_SPLIT_CANDIDATES if s in splits), None)
    train_split = train_split or self.default_train_split
    if train_split not in splits:
      raise DataError(f'image folder {root!r} has no train split {train_split!r} (found '
                      f'sub-folders {splits}); expected the layout {layout}')
    # Labels are defined by the train split's class folders, for every split.
    self.classes = _list_classes(os.path.join(root, train_split))
    if not self.classes:
      raise DataError(f'image folder {root!r} has no class folders in {root}/{train_split}; '
                      f'expected the layout {layout}')
    self.num_classes = len(self.classes)
    self.skip_corrupt = skip_corrupt
    self._skipped: dict[str, tuple[str, ...]] = {}
    train_dir = os.path.join(root, train_split)
    _, labels, _ = _list_files(train_dir, self.classes)
    empty = [os.path.join(train_dir, c) for i, c in enumerate(self.classes)
             if not np.any(labels == i)]
    if empty:
      raise DataError(f'class folder {empty[0]} holds no images ({", ".join(IMAGE_EXTENSIONS)})'
                      + (f' (and {len(empty) - 1} more)' if len(empty) > 1 else '')
                      + '; it would still be a class the model must predict: add images or '
                      'remove the folder')
    if skip_corrupt:
      eval_split = eval_split or self.default_eval_split
      self._warn_skipped([s for s in dict.fromkeys((train_split, eval_split)) if s in splits])

  def _warn_skipped(self, splits) -> None:
    """One warning line for the files `skip_corrupt` leaves out of `splits` (once per process)."""
    for split in splits:
      self.files(split)
    counts = [(s, len(self._skipped.get(s, ()))) for s in splits]
    skipped = [p for s in splits for p in self._skipped.get(s, ())]
    if skipped and (self.root, tuple(counts)) not in _WARNED:
      _WARNED.add((self.root, tuple(counts)))
      where = ', '.join(f'{n} of split {s!r}' for s, n in counts if n)
      print(f'warning: leaving out {len(skipped)} file(s) of {self.root} that do not read or '
            f'decode (data.skip_corrupt): {where}; e.g. {skipped[0]}', file=sys.stderr,
            flush=True)

  def _split_dir(self, split: str) -> str:
    split_dir = os.path.join(self.root, split)
    if split not in self.splits:
      raise DataError(f'image folder {self.root!r} has no split {split!r} (found sub-folders '
                      f'{list(self.splits)}); expected {self.root}/<split>/<class>/<image file>')
    extra = sorted(set(_list_classes(split_dir)) - set(self.classes))
    if extra:
      raise DataError(f'split {split!r} of image folder {self.root!r} has classes that the train '
                      f'split lacks: {extra[:10]}; every class needs a folder in the train split')
    return split_dir

  def files(self, split: str) -> tuple[tuple[str, ...], np.ndarray]:
    """Paths and int32 labels of one split.

    Raises:
      DataError: the split has no images, or (without skip_corrupt) an entry named like an
        image is no readable file.
    """
    paths, labels, broken = _list_files(self._split_dir(split), self.classes)
    if broken and not self.skip_corrupt:
      (path, why), more = broken[0], len(broken) - 1
      more = f' ({more} more like it in split {split!r})' if more else ''
      raise DataError(f'{path} {why}{more}; remove it, or set --config.data.skip_corrupt=True '
                      'to leave out files that do not read or decode')
    if self.skip_corrupt and paths:
      stamp = tuple(os.stat(p).st_mtime_ns for p in paths)
      bad = set(_unreadable_cached(paths, stamp))
      if bad:
        keep = np.asarray([p not in bad for p in paths])
        paths, labels = tuple(np.asarray(paths, dtype=object)[keep]), labels[keep]
      self._skipped[split] = tuple(p for p, _ in broken) + tuple(sorted(bad))
    if not paths:
      raise DataError(f'split {split!r} of image folder {self.root!r} holds no images '
                      f'({", ".join(IMAGE_EXTENSIONS)}) in its class folders')
    return paths, labels

  def num_examples(self, split: str) -> int:
    return len(self.files(split)[0])

  def split(self, split: str, config):
    """The split as an indexed `Split` that reads each file when its example is needed."""
    from repvit_jax.data import decode, split as split_lib  # pylint: disable=g-import-not-at-top
    from repvit_jax.data._tf import tf  # pylint: disable=g-import-not-at-top
    del config
    paths, labels = self.files(split)
    paths_t = tf.constant(np.asarray(paths, dtype=object))
    labels_t = tf.constant(labels)

    def read_index(index):
      return tf.io.read_file(tf.gather(paths_t, index)), tf.gather(labels_t, index)

    return split_lib.Split(num_examples=len(paths), decode_crop=decode.decode_encoded_crop,
                           read_index=read_index, describe=lambda index: paths[index],
                           labels=np.asarray(labels, np.int32))
