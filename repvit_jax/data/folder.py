"""Image-folder data sets: root/<split>/<class>/<image file>, as torchvision's ImageFolder.

Classes are the sub-folders of the train split, sorted by name, so label i is the i-th
folder name; eval splits may hold a subset of them. Files are listed once, sorted, so the
example order (and so every run) is reproducible.
"""

from __future__ import annotations

import functools
import os

import numpy as np

from repvit_jax.data.errors import DataError

PREFIX = 'folder:'
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif')
EVAL_SPLIT_CANDIDATES = ('val', 'validation', 'test')


def _list_classes(split_dir: str) -> tuple[str, ...]:
  return tuple(sorted(e.name for e in os.scandir(split_dir)
                      if e.is_dir() and not e.name.startswith('.')))


@functools.lru_cache(maxsize=8)
def _list_files_cached(split_dir: str, classes: tuple[str, ...],
                       stamp: tuple) -> tuple[tuple[str, ...], np.ndarray]:
  del stamp  # Part of the cache key only.
  paths, labels = [], []
  for label, name in enumerate(classes):
    class_dir = os.path.join(split_dir, name)
    if not os.path.isdir(class_dir):
      continue
    files = sorted(f for f in os.listdir(class_dir)
                   if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith('.'))
    paths.extend(os.path.join(class_dir, f) for f in files)
    labels.extend([label] * len(files))
  return tuple(paths), np.asarray(labels, np.int32)


def _list_files(split_dir: str, classes: tuple[str, ...]) -> tuple[tuple[str, ...], np.ndarray]:
  """All image paths of a split and their int32 labels, class by class, sorted.

  Listing ImageNet takes seconds and the info, train and eval calls all need it, so it is
  cached; the folders' modification times are part of the key, so added files are seen.
  """
  stamp = tuple(os.stat(os.path.join(split_dir, c)).st_mtime_ns
                if os.path.isdir(os.path.join(split_dir, c)) else None for c in classes)
  return _list_files_cached(split_dir, classes, stamp)


class FolderSource:
  """Source for `name='folder:/path'`."""

  def __init__(self, name: str, train_split: str | None = None):
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
    """Paths and int32 labels of one split. DataError if the split has no images."""
    paths, labels = _list_files(self._split_dir(split), self.classes)
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
                           read_index=read_index)
