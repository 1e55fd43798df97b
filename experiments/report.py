"""Markdown reports of the reproduction scripts, keeping hand-written notes.

A report's interpretation is written by hand between NOTES_START and
NOTES_END; regenerating the tables must not lose it.
"""

import os

NOTES_START = "<!-- notes: hand-written, kept when the tables are regenerated -->"
NOTES_END = "<!-- /notes -->"


def old_notes(path: str) -> str:
  """The hand-written notes of an existing report, or a placeholder."""
  if not os.path.exists(path):
    return "(no interpretation yet)"
  with open(path) as fh:
    text = fh.read()
  if NOTES_START not in text or NOTES_END not in text:
    return "(no interpretation yet)"
  return text.split(NOTES_START, 1)[1].split(NOTES_END, 1)[0].strip()


def write_markdown(path: str, lines: list[str], after: list[str] = ()) -> None:
  """Writes `lines`, the report's preserved hand-written notes, then `after`."""
  lines = lines + ["", NOTES_START, old_notes(path), NOTES_END] + (
      [""] + list(after) if after else [])
  with open(path, "w") as fh:
    fh.write("\n".join(lines) + "\n")
