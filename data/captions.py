"""A caption per image, for text conditioning.

A folder gives them in either of the two conventions users already have:

- `metadata.jsonl` at the folder's root, one JSON object per line with `file_name` (relative to the root) and
  `text` (the Hugging Face imagefolder convention; `model.scripts.fetch_emoji` writes one);
- `<image>.txt` beside an image (`cat.png` and `cat.txt`), as many training sets ship them.

metadata.jsonl wins where both give one. With captions on, a data set's items are (x, y, text) and its batches
(x, y, texts), texts a list of strings (`Captioned`, `batch_parts`). A Hugging Face data set names its caption column with
`data.hf_caption_column`. An image without a caption, or with an empty one, follows `data.on_missing_caption`:
"empty" gives it the empty prompt (which is also what classifier-free guidance trains the unconditional branch
on), "error" stops with the first such image named.
"""
from __future__ import annotations

import json
import os
from typing import Optional, Sequence

from torch.utils.data import Dataset

from model.errors import UserError

METADATA = "metadata.jsonl"


def metadata_table(root: str, field: str) -> dict[str, object]:
    """{file_name: row[field]} from root/metadata.jsonl, {} without one; a broken line is an error naming it."""
    path = os.path.join(root, METADATA)
    if not os.path.isfile(path):
        return {}
    table = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                table[os.path.normpath(row["file_name"])] = row.get(field)
            except (ValueError, KeyError, TypeError, AttributeError) as err:
                raise UserError(f"line {number} of {path} is not a JSON object with file_name and {field} ({err}); "
                                f"fix that line") from None
    return table


def metadata_captions(root: str) -> dict[str, str]:
    """{file_name: text} from root/metadata.jsonl, {} without one."""
    return {name: str(text or "") for name, text in metadata_table(root, "text").items()}


def metadata_field(root: str, paths: Sequence[str], field: str) -> list[str]:
    """The value of `field` in root/metadata.jsonl for every image path under root; an image without one is an
    error naming it."""
    table = metadata_table(root, field)
    values = [table.get(os.path.normpath(os.path.relpath(p, root))) for p in paths]
    missing = [p for p, v in zip(paths, values) if v in (None, "")]
    if missing:
        raise UserError(f"{len(missing)} images have no {field!r} in {os.path.join(root, METADATA)} (first: "
                        f"{missing[0]}); add it, or unset data.label_field to take classes from the sub-folders")
    return [str(v) for v in values]


def sidecar_caption(path: str) -> Optional[str]:
    """The text of `<image>.txt` beside an image, None without one."""
    txt = os.path.splitext(path)[0] + ".txt"
    if not os.path.isfile(txt):
        return None
    with open(txt, encoding="utf-8") as f:
        return f.read().strip()


def apply_policy(captions: Sequence[Optional[str]], names: Sequence[str], policy: str, where: str) -> list[str]:
    """Missing (None) or empty captions become "" (policy "empty") or stop with the first one named ("error")."""
    missing = [name for name, text in zip(names, captions) if not (text or "").strip()]
    if missing and policy == "error":
        raise UserError(f"{len(missing)} images in {where} have no caption (first: {missing[0]}); add them, or set "
                        f"data.on_missing_caption empty to train those on the empty prompt")
    return [(text or "").strip() for text in captions]


def folder_captions(root: str, paths: Sequence[str], policy: str) -> list[str]:
    """The caption of every image path under root: metadata.jsonl, else <image>.txt, else the policy."""
    table = metadata_captions(root)
    found = []
    for path in paths:
        text = table.get(os.path.normpath(os.path.relpath(path, root)))
        found.append(text if text else sidecar_caption(path))
    return apply_policy(found, paths, policy, root)


class Captioned(Dataset):
    """Items (x, y) of `items` → (x, y, captions[i])."""

    def __init__(self, items: Dataset, captions: Sequence[str]) -> None:
        self.items, self.captions = items, captions

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        x, y = self.items[i]
        return x, y, self.captions[i]


def batch_parts(batch) -> tuple:
    """(x, y, texts) of a batch with or without captions (texts None without)."""
    return (batch[0], batch[1], batch[2] if len(batch) > 2 else None)
