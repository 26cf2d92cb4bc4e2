"""HCP 7T movie watching (Van Essen et al. 2012): 184 subjects, 4 runs of movie clips, TR = 1 s.

Files read under ``root`` (the ConnectomeDB layout). Sources in brackets: [W] the HCP wiki page "7T Movie watching
task clip info, timing, versions shown per individual subject" (two versions of the clips; 147 subjects, scanned
before 22 August 2014, saw V1; the attachments HCP_7T_Movie_Clip_Timing.csv and HCP_7T_Movie_Info.csv);
[N] the project's format notes (gathered from the HCP manuals and public loaders), not re-checked against a download::

    <subject>/MNINonLinear/Results/tfMRI_MOVIE{1..4}_7T_{AP,PA}/                        [N]
        tfMRI_MOVIE1_7T_AP_Atlas_1.6mm_MSMAll_hp2000_clean.dtseries.nii   CIFTI-2 (T, grayordinates); default
        tfMRI_MOVIE1_7T_AP_hp2000_clean.nii.gz                            volumetric MNI alternative (space: volume)
    <subject>/MNINonLinear/fsaverage_LR59k/<subject>.{L,R}.midthickness_MSMAll.59k_fs_LR.surf.gii
                                   vertex positions of the CIFTI cortex (found by vertex count; option surfaces)
    <stimulus_dir>/{Pre,Post}_20140821_version/7T_MOVIE{1..4}_*.mp4   the movie of each run in each version [W: two
                                   versions]; a stimulus_dir without *_version folders is one version for everybody
    <stimulus_dir>/**/HCP_7T_Movie_Clip_Timing.csv   start/stop of every clip and rest block, run-local seconds [W];
                                   the one inside a version's folder is used for that version, else the first found
    movie_versions table (option)  CSV/TSV with columns ``subject, version`` written by the user from [W]; version is
                                   a folder name (Post_20140821_version), ``pre``/``post`` or ``V1``/``V2``

Movie versions [W]: subjects scanned before 22 August 2014 saw the first version of the clips, later subjects the
second. When both version folders are there, option ``movie_versions`` must say which version each subject saw
(an error names the folders otherwise; a subject missing from the table is an error naming the table). Content
groups: versions whose movie files are byte-identical (SHA-256) for every chosen run count as one; any other
difference makes separate groups. Subjects are averaged only within a group, so each group average is over
subjects who saw the same clips: one store subject ``group`` when there is one group, else
``group-<version folder>`` per group, whose images (named ``<version folder>_<frame>``) are the frames of that
group's own movies.

Run length: the expected TR count of a run is option ``run_trs`` ({run: count}, e.g. the documented {1: 921, 2:
918, 3: 915, 4: 901} [N]) when it names the run, else the most common count among the group's subjects (a tie goes
to the longest). A subject's run with another count (a scan stopped early) is left out of the average, with a
warning naming the file and an entry in the report's ``dropped_runs`` (``short_runs: drop``, the default), or is
an error naming the file and the fix (``short_runs: error``). The other subjects' runs are never cut.

Protocol (paper section 4.1, after Khosla et al. 2021): one frame per TR (1 Hz) taken from the movie file, the
frame on screen at k * TR + frame_offset_s (default 0.5 s: the middle of the TR); the response at TR t is paired
with frame k = t - delay_s / TR (default 4 s: the haemodynamic delay). Rest blocks are kept. Every run ends
with the same test-retest clip: its frames are one set of images shared by all runs (the k-th second of the
clip is one image, shown once per run), which makes it the test set with 4 repeats and gives the noise
ceiling. The other frames are split train/val by 20-s chunks of the movie (``chunk_s``), never by frame, so
neighbouring TRs do not leak across splits. By default the subjects are averaged (``group_average``): each
subject's run is z-scored per grayordinate over time (``zscore``) and the runs are averaged TR by TR over the
group's subjects; with ``group_average: false`` every subject is written on its own (with its version's frames).

Grayordinates: CIFTI ``structures`` (default all) intersected with ``roi_file`` (a CIFTI dlabel/dscalar on the
same grayordinates, or a NIfTI on the volume grid; voxels > 0, or whose label is in ``roi_labels``), e.g. the
HCP-MMP1 visual areas: the paper keeps only visual voxels (29K). Coordinates: surface vertices at their
midthickness position (mm), subcortical voxels by the CIFTI volume affine, volume voxels by the NIfTI affine.
ROI sets: ``structure`` (CIFTI structure, CIFTI space) and ``roi`` (label of roi_file, when given).

The clip-timing sheet: the official file is read as sections, one per movie (a line naming 7T_MOVIE<n>...),
each with rows "block, start, stop[, duration]" where block "0" is rest and "<run>.<clip>" a clip; a plain
table with columns run, block (or clip), start, stop (or end) is read too. ``test_clip: last`` takes each run's
last clip as the test-retest clip; a list of block labels per run names them instead.

[unverified] the clip-timing sheet's layout (taken from a public parser of it, not the file itself); the version
folder names (Pre_20140821_version, Post_20140821_version: any ``*_version`` folder holding 7T_MOVIE*.mp4 is a
version) and the movie file names inside them; which clips differ between the versions (hence the byte
comparison); that the movie file's time 0 is the run's first TR; the surface file names. Handled: both sheet
layouts; any ``surfaces`` mapping; a movie shorter than the run (trials past its end are dropped, counted in
the report's ``trs_without_frame``).
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from afo.data.adapter import CheckRow, DatasetAdapter, check_row, nan_columns
from afo.data.bigbrain import DirectTarget
from afo.data.files import DatasetFileNotFoundError, DatasetFormatError, format_error, reading, require_file
from afo.data.media import video_duration, video_frames_at
from afo.data.options import AdapterOptionError, as_list, check_choice, progress, resolve_options, warn
from afo.data.store import SPLIT_CODE, StoreWriter, SurfaceLayout
from afo.io import file_sha256

ADAPTER = "hcp_movie"
CHUNK_TRS = 128

DEFAULTS: dict[str, Any] = {
    "name": "hcp_movie",
    "subjects": None,
    "runs": [1, 2, 3, 4],
    "space": "cifti",
    "cifti_name": "{run}_Atlas_1.6mm_MSMAll_hp2000_clean.dtseries.nii",
    "volume_name": "{run}_hp2000_clean.nii.gz",
    "stimulus_dir": None,
    "clip_timing": None,
    "movie_files": None,
    "delay_s": 4.0,
    "frame_offset_s": 0.5,
    "chunk_s": 20.0,
    "test_clip": "last",
    "structures": None,
    "roi_file": None,
    "roi_labels": None,
    "surfaces": None,
    "group_average": True,
    "movie_versions": None,
    "short_runs": "drop",
    "run_trs": None,
    "zscore": True,
    "val_fraction": 0.06,
    "seed": 0,
}

LAYOUT = (
    "<root>/<subject>/MNINonLinear/Results/tfMRI_MOVIE<n>_7T_<AP|PA>/<run>_Atlas_1.6mm_MSMAll_hp2000_clean"
    ".dtseries.nii, <stimulus_dir>/**/7T_MOVIE<n>_*.mp4, <stimulus_dir>/**/HCP_7T_Movie_Clip_Timing.csv"
)


# ----------------------------------------------------------------------------------------------------------------
# clip timing


@dataclass(frozen=True)
class Block:
    run: int
    label: str
    start: float
    stop: float

    @property
    def is_rest(self) -> bool:
        return self.label.strip().lower() in ("0", "rest", "0.0", "")


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def parse_clip_timing(path: Path) -> dict[int, list[Block]]:
    """{run: blocks sorted by start} from the official sectioned sheet or a tidy table."""
    require_file(path, "clip timing sheet", LAYOUT)
    text = path.read_text(errors="replace").replace("\r\n", "\n").replace("\r", "\n")
    rows = [[c.strip() for c in row] for row in csv.reader(io.StringIO(text)) if any(c.strip() for c in row)]
    if not rows:
        raise format_error(path, "rows", "are empty", "clip and rest blocks with start and stop times")
    header = [c.lower() for c in rows[0]]
    tidy = any(h in ("run", "movie") for h in header) and "start" in header and ("stop" in header or "end" in header)
    blocks = _parse_tidy(path, header, rows[1:]) if tidy else _parse_sections(path, rows)
    out: dict[int, list[Block]] = {}
    for b in blocks:
        out.setdefault(b.run, []).append(b)
    return {r: sorted(bs, key=lambda b: b.start) for r, bs in out.items()}


def _run_of(text: str) -> int | None:
    m = re.search(r"MOVIE\s*(\d)", text, flags=re.IGNORECASE)
    if m:
        return int(m.group(1))
    return int(text) if text.isdigit() else None


def _parse_tidy(path: Path, header: list[str], rows: list[list[str]]) -> list[Block]:
    col = {h: i for i, h in enumerate(header)}
    run_c = col.get("run", col.get("movie"))
    label_c = next((col[h] for h in ("block", "clip", "label", "movie.block") if h in col), None)
    stop_c = col.get("stop", col.get("end"))
    blocks = []
    for row in rows:
        run = _run_of(row[run_c])
        start, stop = _number(row[col["start"]]), _number(row[stop_c])
        if run is None or start is None or stop is None:
            raise format_error(path, "row", f"{row} has no run/start/stop", "run, block, start, stop per row")
        blocks.append(Block(run, row[label_c] if label_c is not None else "clip", start, stop))
    return blocks


def _parse_sections(path: Path, rows: list[list[str]]) -> list[Block]:
    blocks, run = [], None
    for row in rows:
        start, stop = (_number(row[1]), _number(row[2])) if len(row) >= 3 else (None, None)
        if start is None or stop is None:
            found = _run_of(row[0]) if re.search(r"MOVIE", row[0], flags=re.IGNORECASE) else None
            if found is not None:
                run = found  # a section header naming the movie
            continue  # column headers such as "movie.block,start,stop,duration"
        if run is None:
            raise format_error(
                path,
                "section",
                f"row {row} comes before any 7T_MOVIE<n> line",
                "one section per movie, headed by a line naming 7T_MOVIE<n>",
            )
        blocks.append(Block(run, row[0], start, stop))
    return blocks


def test_windows(timing: dict[int, list[Block]], runs: list[int], test_clip: Any, path: Path) -> dict[int, Block]:
    """The test-retest clip of each run."""
    labels = as_list(test_clip) if test_clip != "last" else None
    if labels is not None and len(labels) != len(runs):
        raise AdapterOptionError(f"{ADAPTER}: test_clip lists {len(labels)} block labels for {len(runs)} runs")
    out = {}
    for i, run in enumerate(runs):
        clips = [b for b in timing.get(run, []) if not b.is_rest]
        if not clips:
            raise format_error(path, f"run {run}", "has no clip block", "the clips of every run, e.g. '1.1, 20, 264'")
        if labels is None:
            out[run] = clips[-1]
        else:
            match = [b for b in clips if b.label == str(labels[i])]
            if not match:
                raise format_error(
                    path, f"run {run}", f"has no block {labels[i]!r}", f"one of {[b.label for b in clips]}"
                )
            out[run] = match[0]
    return out


# ----------------------------------------------------------------------------------------------------------------
# files


def _stimulus_files(folder: Path, pattern: str) -> list[Path]:
    """Files matching ``pattern`` below ``folder``, skipping subject folders (all-digit names)."""
    found = sorted(folder.glob(pattern))
    for child in sorted(folder.iterdir()) if folder.is_dir() else []:
        if child.is_dir() and not child.name.isdigit():
            found += sorted(child.rglob(pattern))
    return found


def _stimulus_dir(root: Path, opts: dict) -> Path:
    if opts["stimulus_dir"]:
        return Path(opts["stimulus_dir"])
    return root / "7T_movie_resources" if (root / "7T_movie_resources").is_dir() else root


def _movie_files(stim_dir: Path, opts: dict, runs: list[int]) -> dict[int, Path]:
    given = opts["movie_files"] or {}
    out = {}
    for run in runs:
        if run in given or str(run) in given:
            out[run] = require_file(given.get(run, given.get(str(run))), f"movie of run {run}", LAYOUT)
            continue
        found = _stimulus_files(stim_dir, f"7T_MOVIE{run}_*.mp4")
        if not found:
            raise DatasetFileNotFoundError(
                f"{stim_dir}: no 7T_MOVIE{run}_*.mp4 (option movie_files or stimulus_dir). Expected layout: {LAYOUT}"
            )
        out[run] = found[0]
    return out


def _run_dir(root: Path, subject: str, run: int) -> Path | None:
    found = sorted((root / subject / "MNINonLinear" / "Results").glob(f"tfMRI_MOVIE{run}_7T_*"))
    return found[0] if found else None


def _run_file(root: Path, subject: str, run: int, opts: dict) -> Path | None:
    d = _run_dir(root, subject, run)
    if d is None:
        return None
    template = opts["cifti_name"] if opts["space"] == "cifti" else opts["volume_name"]
    path = d / template.format(run=d.name)
    return path if path.exists() else None


def _subjects(root: Path, opts: dict) -> list[str]:
    if opts["subjects"] is not None:
        return [str(s) for s in as_list(opts["subjects"])]
    found = sorted(
        p.name for p in root.iterdir() if p.is_dir() and p.name.isdigit() and (p / "MNINonLinear" / "Results").is_dir()
    )
    if not found:
        raise DatasetFileNotFoundError(f"{root}: no <subject>/MNINonLinear/Results folders. Expected: {LAYOUT}")
    return found


# ----------------------------------------------------------------------------------------------------------------
# movie versions: which clips each subject saw


VERSION_ALIASES = {"v1": "pre", "v2": "post"}  # the HCP wiki calls Pre/Post_20140821_version "V1" and "V2"
TABLE_EXPECTED = "a CSV with columns subject, version (version: a movie folder name such as Post_20140821_version)"


@dataclass(frozen=True)
class MovieVersion:
    """One version of the movies: a ``*_version`` folder, or the stimulus folder when it has none (name '')."""

    name: str
    folder: Path


def find_movie_versions(stim_dir: Path, opts: dict) -> list[MovieVersion]:
    """The ``*_version`` folders of ``stim_dir`` that hold 7T_MOVIE*.mp4 files (the release ships
    Pre_20140821_version and Post_20140821_version); ``stim_dir`` itself when there are none or when the
    option movie_files names the movies."""
    if opts["movie_files"] or not stim_dir.is_dir():
        return [MovieVersion("", stim_dir)]
    found = [
        MovieVersion(p.name, p)
        for p in sorted(stim_dir.iterdir())
        if p.is_dir() and p.name.lower().endswith("_version") and any(p.rglob("7T_MOVIE*.mp4"))
    ]
    return found or [MovieVersion("", stim_dir)]


def _match_version(value: str, versions: list[MovieVersion]) -> MovieVersion | None:
    """The version a table entry names: the folder name, its first part (pre, post) or V1/V2, any case."""
    wanted = value.strip().lower()
    alias = VERSION_ALIASES.get(wanted, wanted)
    for version in versions:
        name = version.name.lower()
        if wanted == name or alias == name.split("_")[0]:
            return version
    return None


def read_version_table(path: Path, versions: list[MovieVersion]) -> dict[str, MovieVersion]:
    """{subject: version} from the user's table (CSV or TSV with columns subject, version)."""
    require_file(path, "movie version table (option movie_versions)", TABLE_EXPECTED)
    text = path.read_text(encoding="utf-8-sig", errors="replace")  # utf-8-sig: spreadsheets add a BOM
    lines = text.splitlines()
    delimiter = "\t" if lines and "\t" in lines[0] and "," not in lines[0] else ","
    reader = csv.DictReader(io.StringIO(text), delimiter=delimiter)
    columns = {c.strip().lower(): c for c in reader.fieldnames or []}
    for needed in ("subject", "version"):
        if needed not in columns:
            raise format_error(path, needed, f"is missing (columns: {list(columns)})", TABLE_EXPECTED)
    out: dict[str, MovieVersion] = {}
    for line, row in enumerate(reader, start=2):
        subject, value = (row[columns["subject"]] or "").strip(), (row[columns["version"]] or "").strip()
        if not subject:
            continue
        version = _match_version(value, versions)
        if version is None:
            raise format_error(
                path,
                "version",
                f"{value!r} on line {line} (subject {subject}) names no movie folder",
                f"one of {[v.name for v in versions]} (or pre/post, V1/V2)",
            )
        if out.get(subject, version) != version:
            raise format_error(path, "subject", f"{subject} has two versions", "one row per subject")
        out[subject] = version
    return out


def assign_versions(
    subjects: list[str], versions: list[MovieVersion], stim_dir: Path, opts: dict
) -> dict[str, MovieVersion]:
    """The movie version each subject saw: the only one there is, or the user's table (option movie_versions)."""
    table = opts["movie_versions"]
    if table is None:
        if len(versions) > 1:
            folders = ", ".join(str(v.folder) for v in versions)
            raise DatasetFormatError(
                f"{stim_dir}: holds {len(versions)} versions of the movies ({folders}); subjects scanned before "
                "22 August 2014 saw the first, later ones the second, so the version cannot be guessed. Give a "
                "table with columns subject, version as option movie_versions (HCP lists the version each subject "
                "saw on its '7T Movie watching task clip info, timing, versions shown per individual subject' page)"
            )
        return {s: versions[0] for s in subjects}
    path = Path(table)
    if opts["movie_files"]:
        raise AdapterOptionError(
            f"{ADAPTER}: options movie_files (one movie per run, for every subject) and "
            "movie_versions (a movie version per subject) exclude each other; keep one"
        )
    if versions[0].name == "":
        raise DatasetFileNotFoundError(
            f"{stim_dir}: option movie_versions ({path}) names movie versions, but this folder has no *_version "
            "folders (Pre_20140821_version, Post_20140821_version); expected the movie download's layout"
        )
    by_subject = read_version_table(path, versions)
    missing = [s for s in subjects if s not in by_subject]
    if missing:
        raise format_error(
            path,
            "subject",
            f"has no row for {len(missing)} subject(s), e.g. {missing[:5]}",
            "one row per prepared subject (columns subject, version)",
        )
    return {s: by_subject[s] for s in subjects}


@dataclass
class ContentGroup:
    """Subjects who saw the same clips: one or more versions whose movie files are byte-identical for every run."""

    versions: list[MovieVersion]
    subjects: list[str]
    movies: dict[int, Path]
    timing_path: Path
    name: str = "group"  # store subject of the group average
    tag: str = ""  # image-name prefix, set when the dataset has more than one group
    runs: list[int] = field(default_factory=list)  # runs with at least one usable subject file
    n_trs: dict[int, int] = field(default_factory=dict)  # the expected TR count of each run


def _timing_path(version: MovieVersion, stim_dir: Path, opts: dict) -> Path:
    if opts["clip_timing"]:
        return Path(opts["clip_timing"])
    for folder in (version.folder, stim_dir):
        found = _stimulus_files(folder, "HCP_7T_Movie_Clip_Timing.csv")
        if found:
            return found[0]
    return stim_dir / "HCP_7T_Movie_Clip_Timing.csv"


def content_groups(
    assigned: dict[str, MovieVersion], runs: list[int], stim_dir: Path, opts: dict
) -> list[ContentGroup]:
    """Group subjects by what they saw. Versions whose movies are byte-identical for every chosen run are one group;
    any difference (other clips, another cut or encoding) makes separate groups, never averaged together."""
    by_content: dict[tuple[str, ...], ContentGroup] = {}
    for version in dict.fromkeys(assigned.values()):
        members = [s for s, v in assigned.items() if v == version]
        movies = _movie_files(version.folder, opts, runs)
        key = tuple(file_sha256(movies[r]) for r in runs)
        if key in by_content:
            by_content[key].versions.append(version)
            by_content[key].subjects += members
        else:
            by_content[key] = ContentGroup([version], members, movies, _timing_path(version, stim_dir, opts))
    groups = list(by_content.values())
    if len(groups) > 1:
        for g in groups:
            g.tag = "+".join(v.name for v in g.versions)
            g.name = f"group-{g.tag}"
    return groups


# ----------------------------------------------------------------------------------------------------------------
# run lengths: a short run is dropped (reported) or an error, never a cut of every subject


def _expected_trs(run: int, found: list[int], opts: dict) -> tuple[int, str]:
    """(expected TR count of a run, where that number comes from): option run_trs when it names the run, else the
    most common count among the group's files (a tie goes to the longest)."""
    given = opts["run_trs"] or {}
    if run in given or str(run) in given:
        return int(given.get(run, given.get(str(run)))), "option run_trs"
    counts = {n: found.count(n) for n in set(found)}
    expected = max(counts, key=lambda n: (counts[n], n))
    return expected, f"{counts[expected]} of {len(found)} subjects who saw the same movie"


def check_run_lengths(
    groups: list[ContentGroup],
    files: dict[str, dict[int, Path | None]],
    lengths: dict[Path, int],
    runs: list[int],
    opts: dict,
) -> list[dict]:
    """Set each group's expected TR count per run (:func:`_expected_trs`) and its usable runs. A file with another
    count is an error (``short_runs: error``) or is left out of that subject's data (``short_runs: drop``, the
    default): ``files`` loses it, a warning names it, and the returned records say which (subject, run, file,
    n_trs, expected)."""
    dropped = []
    for g in groups:
        for run in runs:
            have = [s for s in g.subjects if files[s][run] is not None]
            if not have:
                continue
            expected, source = _expected_trs(run, [lengths[files[s][run]] for s in have], opts)
            for s in have:
                path = files[s][run]
                if lengths[path] == expected:
                    continue
                if opts["short_runs"] == "error":
                    raise DatasetFormatError(
                        f"{path}: has {lengths[path]} TRs, but run {run} has {expected} ({source}); expected a "
                        "complete run. Re-download this file, or set option short_runs: drop to leave this "
                        "subject's run out (it is then listed in the report)"
                    )
                warn(
                    f"{path}: has {lengths[path]} TRs where run {run} has {expected} ({source}); subject {s}'s run "
                    f"{run} is left out (short_runs: drop; listed in the report under dropped_runs)"
                )
                dropped.append(
                    {"subject": s, "run": run, "file": str(path), "n_trs": lengths[path], "expected": expected}
                )
                files[s][run] = None
            if any(files[s][run] is not None for s in have):
                g.n_trs[run] = expected
                g.runs.append(run)
    return dropped


# ----------------------------------------------------------------------------------------------------------------
# grayordinates / voxels


def _short(structure: str) -> str:
    return structure.replace("CIFTI_STRUCTURE_", "")


class CiftiSpace:
    """Which grayordinates are kept, where they are, and how to read them from a dtseries."""

    def __init__(self, first: Path, root: Path, subject: str, opts: dict):
        self.opts = opts
        with reading(first, "CIFTI dtseries", "a CIFTI-2 dense time series (.dtseries.nii)"):
            img = nib.load(first)
            if not isinstance(img, nib.Cifti2Image):
                raise format_error(first, "format", "is not CIFTI-2", "a .dtseries.nii CIFTI-2 file")
            self.axis = img.header.get_axis(1)
        if not isinstance(self.axis, nib.cifti2.BrainModelAxis):
            raise format_error(first, "axis 1", f"is a {type(self.axis).__name__}", "a BrainModelAxis (grayordinates)")
        keep = np.ones(len(self.axis), dtype=bool)
        if opts["structures"]:
            wanted = {nib.cifti2.BrainModelAxis.to_cifti_brain_structure_name(s) for s in as_list(opts["structures"])}
            keep &= np.isin(self.axis.name, list(wanted))
        self.roi_labels = None
        if opts["roi_file"]:
            values, names = self._roi(Path(opts["roi_file"]))
            keep &= values
            self.roi_labels = names
        self.columns = np.flatnonzero(keep)
        if not self.columns.size:
            raise AdapterOptionError(f"{ADAPTER}: structures/roi_file select no grayordinate")
        self.first, self.root, self.subject = first, root, subject

    def _roi(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        with reading(path, "ROI file", "a CIFTI dlabel/dscalar on the data's grayordinates"):
            img = nib.load(path)
            if not isinstance(img, nib.Cifti2Image):
                raise format_error(path, "format", "is not CIFTI-2", "a CIFTI dlabel or dscalar file")
            values = np.asarray(img.dataobj)[0]
            axis0, axis1 = img.header.get_axis(0), img.header.get_axis(1)
        if len(axis1) != len(self.axis) or not np.array_equal(axis1.name, self.axis.name):
            raise format_error(path, "grayordinates", f"are {len(axis1)}", f"the data's {len(self.axis)}")
        if isinstance(axis0, nib.cifti2.LabelAxis):
            table = axis0.label[0]
            names = np.asarray(
                [table[int(v)][0] if int(v) in table and int(v) != 0 else "" for v in values], dtype=object
            )
        else:
            names = np.asarray([str(int(v)) if v > 0 else "" for v in values], dtype=object)
        wanted = as_list(self.opts["roi_labels"])
        inside = np.isin(names, [str(w) for w in wanted]) if wanted else names != ""
        return inside, names

    def _surface(self, structure: str, n_vertices: int) -> np.ndarray:
        given = self.opts["surfaces"] or {}
        short = _short(structure)
        side = "L" if "LEFT" in short else "R" if "RIGHT" in short else None
        for key in (structure, short, {"L": "left", "R": "right"}.get(side or "", "")):
            if key in given:
                return _read_surface(Path(given[key]), n_vertices)
        folder = self.root / self.subject / "MNINonLinear"
        tried = []
        if side:
            for path in sorted(folder.glob(f"fsaverage_LR*k/*.{side}.midthickness*.surf.gii")) + sorted(
                folder.glob(f"*.{side}.midthickness*.surf.gii")
            ):
                tried.append(path)
                xyz = _read_surface(path, None)
                if len(xyz) == n_vertices:
                    return xyz
        raise DatasetFileNotFoundError(
            f"{folder}: no midthickness surface with {n_vertices} vertices for {short} (tried "
            f"{[p.name for p in tried]}); name one with option surfaces: {{{short}: path.surf.gii}}"
        )

    def coords(self) -> np.ndarray:
        out = np.empty((len(self.axis), 3), dtype=np.float64)
        out[:] = np.nan
        for structure, sl, bm in self.axis.iter_structures():
            rows = np.arange(len(self.axis))[sl]
            if not np.isin(rows, self.columns).any():
                continue
            if bm.volume_mask.all():
                out[rows] = nib.affines.apply_affine(self.axis.affine, bm.voxel)
            else:
                xyz = self._surface(structure, int(self.axis.nvertices[structure]))
                out[rows] = xyz[bm.vertex]
        return out[self.columns].astype(np.float32)

    def layout(self) -> SurfaceLayout:
        """The kept grayordinates on the CIFTI brain-model axis (structure, vertex or voxel i, j, k), so maps are
        written back as CIFTI dscalar files on the same grayordinates."""
        volume = self.axis.volume_mask[self.columns]
        index = np.full((self.columns.size, 3), -1, dtype=np.int64)
        index[~volume, 0] = self.axis.vertex[self.columns][~volume]
        index[volume] = self.axis.voxel[self.columns][volume]
        has_volume = self.axis.volume_shape is not None and bool(self.axis.volume_mask.any())
        return SurfaceLayout(
            "cifti",
            np.asarray(self.axis.name[self.columns], dtype=object),
            index,
            {str(k): int(v) for k, v in self.axis.nvertices.items()},
            volume_affine=np.asarray(self.axis.affine) if has_volume else None,
            volume_shape=tuple(int(x) for x in self.axis.volume_shape) if has_volume else None,
        )

    def rois(self) -> dict[str, list[str]]:
        sets = {"structure": [_short(s) for s in self.axis.name[self.columns]]}
        if self.roi_labels is not None:
            sets["roi"] = [str(x) for x in self.roi_labels[self.columns]]
        return sets

    def read(self, path: Path, n_trs: int) -> np.ndarray:
        """[n_trs, n_kept] float32, read in chunks of TRs (the TR axis is the slow one in the file)."""
        with reading(path, "CIFTI dtseries", "a CIFTI-2 dense time series"):
            img = nib.load(path)
            axis = img.header.get_axis(1)
            if len(axis) != len(self.axis) or not np.array_equal(axis.name, self.axis.name):
                raise format_error(path, "grayordinates", f"are {len(axis)}", f"{len(self.axis)} like {self.first}")
            out = np.empty((n_trs, self.columns.size), dtype=np.float32)
            for t0 in range(0, n_trs, CHUNK_TRS):
                out[t0 : t0 + CHUNK_TRS] = np.asarray(img.dataobj[t0 : min(t0 + CHUNK_TRS, n_trs)])[:, self.columns]
        return out


def _read_surface(path: Path, n_vertices: int | None) -> np.ndarray:
    with reading(path, "GIFTI surface", "a .surf.gii with a pointset"):
        img = nib.load(path)
        arrays = [d for d in img.darrays if d.intent == nib.nifti1.intent_codes["NIFTI_INTENT_POINTSET"]]
        arrays = arrays or [d for d in img.darrays if d.data.ndim == 2 and d.data.shape[1] == 3]
        if not arrays:
            raise format_error(path, "pointset", "is missing", "vertex coordinates (NIFTI_INTENT_POINTSET)")
        xyz = np.asarray(arrays[0].data, dtype=np.float64)
    if n_vertices is not None and len(xyz) != n_vertices:
        raise format_error(path, "vertices", f"are {len(xyz)}", f"{n_vertices} as in the CIFTI file")
    return xyz


class VolumeSpace:
    """Voxels of the volumetric MNI files."""

    def __init__(self, first: Path, opts: dict):
        self.opts, self.first = opts, first
        with reading(first, "volumetric run", "a 4-D NIfTI (X, Y, Z, T)"):
            img = nib.load(first)
            if img.ndim != 4:
                raise format_error(first, "shape", f"is {img.shape}", "4-D (X, Y, Z, T)")
            self.shape, self.affine = img.shape[:3], img.affine
            probe = np.asarray(img.dataobj[..., : min(20, img.shape[3])], dtype=np.float32)
        self.labels = None
        if opts["roi_file"]:
            path = Path(opts["roi_file"])
            with reading(path, "ROI file", f"a NIfTI on the {self.shape} grid"):
                values = np.asarray(nib.load(path).dataobj).reshape(self.shape)
            names = np.where(values > 0, values.astype(np.int64).astype(str), "")
            wanted = as_list(opts["roi_labels"])
            mask = np.isin(names, [str(w) for w in wanted]) if wanted else names != ""
            self.labels = names
        else:
            # no ROI file: voxels that vary over the first TRs (the brain; zeros outside it)
            mask = probe.std(axis=3) > 0
            warn(f"{ADAPTER}: no roi_file; keeping the {int(mask.sum())} voxels that vary in {first.name}")
        self.ijk = np.argwhere(mask)
        if not len(self.ijk):
            raise AdapterOptionError(f"{ADAPTER}: the voxel selection is empty")

    def coords(self) -> np.ndarray:
        return nib.affines.apply_affine(self.affine, self.ijk).astype(np.float32)

    def rois(self) -> dict[str, list[str]]:
        return {"roi": [str(x) for x in self.labels[tuple(self.ijk.T)]]} if self.labels is not None else {}

    def read(self, path: Path, n_trs: int) -> np.ndarray:
        with reading(path, "volumetric run", f"a 4-D NIfTI on the {self.shape} grid"):
            img = nib.load(path, keep_file_open=True)  # chunks read forward through one gzip stream
            if img.shape[:3] != self.shape:
                raise format_error(path, "shape", f"is {img.shape}", f"{self.shape} x T like {self.first}")
            out = np.empty((n_trs, len(self.ijk)), dtype=np.float32)
            i, j, k = self.ijk.T
            for t0 in range(0, n_trs, CHUNK_TRS):
                chunk = np.asarray(img.dataobj[..., t0 : min(t0 + CHUNK_TRS, n_trs)])
                out[t0 : t0 + chunk.shape[3]] = chunk[i, j, k, :].T
        return out


def _n_trs_and_tr(path: Path, space: str) -> tuple[int, float]:
    with reading(path, "run header", "a CIFTI dtseries or 4-D NIfTI"):
        img = nib.load(path)
        if space == "cifti":
            series = img.header.get_axis(0)
            if not isinstance(series, nib.cifti2.SeriesAxis):
                raise format_error(path, "axis 0", f"is a {type(series).__name__}", "a SeriesAxis (time)")
            return int(series.size), float(series.step)
        tr = float(img.header.get_zooms()[3]) if img.ndim == 4 else 0.0
        return int(img.shape[3]), tr if tr > 0 else 1.0


# ----------------------------------------------------------------------------------------------------------------
# frames and trials


@dataclass
class RunPlan:
    run: int
    n_trs: int
    tr: float
    shift: int  # TRs between a frame and the response paired with it
    n_frames: int  # frames k = 0..n_frames-1 are used
    image_of_frame: np.ndarray  # image row of frame k
    split_of_frame: np.ndarray


def plan_frames(
    runs: list[int],
    n_trs: dict[int, int],
    tr: float,
    durations: dict[int, float],
    windows: dict[int, Block],
    opts: dict,
) -> tuple[list[RunPlan], list[tuple[str, int, float]]]:
    """Images (name, run to decode from, time in s) and, per run, the image and split of every frame."""
    shift = int(round(float(opts["delay_s"]) / tr))
    offset = float(opts["frame_offset_s"])
    n_retest = min(int(math.floor((w.stop - w.start) / tr)) for w in windows.values())
    images: list[tuple[str, int, float]] = []
    retest_rows: dict[int, int] = {}
    plans, chunk_of = [], []
    for run in runs:
        n_frames = max(0, min(n_trs[run] - shift, int(math.floor((durations[run] - offset) / tr)) + 1))
        image = np.empty(n_frames, dtype=np.int64)
        split = np.full(n_frames, SPLIT_CODE["train"], dtype=np.int8)
        chunks = np.full(n_frames, -1, dtype=np.int64)
        w = windows[run]
        for k in range(n_frames):
            t = k * tr + offset
            j = int(math.floor((t - w.start) / tr)) if w.start <= t < w.stop else -1
            if 0 <= j < n_retest:
                if j not in retest_rows:
                    retest_rows[j] = len(images)
                    images.append((f"retest_{j:03d}", run, t))
                image[k], split[k] = retest_rows[j], SPLIT_CODE["test"]
                continue
            images.append((f"MOVIE{run}_{k:04d}", run, t))
            image[k] = len(images) - 1
            if j >= 0:
                split[k] = SPLIT_CODE["test"]  # the clip's tail beyond its shortest copy: still test
            else:
                chunks[k] = int(math.floor(k * tr / float(opts["chunk_s"])))
        plans.append(RunPlan(run, n_trs[run], tr, shift, n_frames, image, split))
        chunk_of.append(chunks)
    # val = a random set of whole chunks (by (run, chunk)), about val_fraction of them
    keys = sorted({(p.run, c) for p, cs in zip(plans, chunk_of) for c in cs.tolist() if c >= 0})
    n_val = int(round(float(opts["val_fraction"]) * len(keys)))
    if float(opts["val_fraction"]) > 0 and len(keys) > 1:
        n_val = max(n_val, 1)
    order = np.random.default_rng(int(opts["seed"])).permutation(len(keys))
    val = {keys[i] for i in order[:n_val]}
    for plan, chunks in zip(plans, chunk_of):
        for k in np.flatnonzero(chunks >= 0):
            if (plan.run, int(chunks[k])) in val:
                plan.split_of_frame[k] = SPLIT_CODE["val"]
    return plans, images


def _frames(images: list[tuple[str, int, float]], movies: dict[int, Path]) -> Iterator[np.ndarray]:
    """Decode every image's frame, one movie at a time (frames of one run in time order)."""
    by_run: dict[int, list[tuple[int, float]]] = {}
    for row, (_, run, t) in enumerate(images):
        by_run.setdefault(run, []).append((row, t))
    decoded: dict[int, np.ndarray] = {}
    next_row = 0
    for run in progress(sorted(by_run, key=lambda r: by_run[r][0][0]), "hcp movie frames", unit="run"):
        rows = by_run[run]
        frames = video_frames_at(movies[run], [t for _, t in rows])
        try:
            for (row, _), frame in zip(rows, frames):
                decoded[row] = frame
                while next_row in decoded:  # a run's rows are contiguous and in time order: holds one frame
                    yield decoded.pop(next_row)
                    next_row += 1
        finally:
            frames.close()  # closes the video container now, not at garbage collection
    if decoded:
        raise DatasetFormatError("hcp_movie: internal frame order error")


def _zscore_time(x: np.ndarray) -> np.ndarray:
    mean, sd = x.mean(0), x.std(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return ((x - mean) / np.where(sd > 0, sd, np.nan)).astype(np.float32)


def _average_run(space, paths: list[Path], plan: RunPlan, zscore: bool) -> np.ndarray | None:
    """Mean over subjects of one run [n_trs, n_kept] (each z-scored over time first); None if nobody has it.

    One subject's run is in memory at a time, plus the float64 running sum.
    """
    total, count = None, 0
    for path in progress(paths, f"hcp run {plan.run}", unit="subject") if len(paths) > 1 else paths:
        x = space.read(path, plan.n_trs)
        x = _zscore_time(x) if zscore else x
        total = x.astype(np.float64) if total is None else total + x
        count += 1
    return None if total is None else (total / count).astype(np.float32)


def _lengths(files: dict[str, dict[int, Path | None]], space: str) -> tuple[dict[Path, int], float]:
    """TR count of every run file, and the TR (the same in every file)."""
    lengths, tr, first = {}, None, None
    for runs in files.values():
        for path in runs.values():
            if path is None:
                continue
            n, step = _n_trs_and_tr(path, space)
            if tr is not None and abs(step - tr) > 1e-6:
                raise format_error(path, "TR", f"is {step}", f"{tr} like {first}")
            lengths[path], tr, first = n, step, first or path
    return lengths, float(tr)


@dataclass
class GroupPlan:
    """A content group's frame plans and where its images start in the store's image list."""

    group: ContentGroup
    plans: list[RunPlan]
    images: list[tuple[str, int, float]]
    offset: int


def _plan_groups(groups: list[ContentGroup], tr: float, opts: dict) -> list[GroupPlan]:
    out, offset = [], 0
    for g in groups:
        windows = test_windows(parse_clip_timing(g.timing_path), g.runs, opts["test_clip"], g.timing_path)
        durations = {r: video_duration(g.movies[r]) for r in g.runs}
        plans, images = plan_frames(g.runs, g.n_trs, tr, durations, windows, opts)
        for plan in plans:
            plan.image_of_frame = plan.image_of_frame + offset
        if g.tag:  # frames of different movies must not share a name
            images = [(f"{g.tag}_{name}", run, t) for name, run, t in images]
        out.append(GroupPlan(g, plans, images, offset))
        offset += len(images)
    return out


def _write_subjects(target, ds: Opened, coords: np.ndarray, rois: dict) -> list[str]:
    """Group averages (one per content group) or one subject each; returns subjects left without any run."""
    empty = []
    opts = ds.opts
    layout = ds.space.layout() if isinstance(ds.space, CiftiSpace) else None
    # volume runs: the grid, so NIfTI maps can be written in the subjects' (MNI) space
    grid = (
        {}
        if layout is not None
        else {
            "affine": np.asarray(ds.space.affine, dtype=np.float64).ravel(),
            "volume_shape": np.asarray(ds.space.shape[:3], dtype=np.int64),
        }
    )
    for name, members, gp in progress(ds.units(), "hcp subjects", unit="subject"):
        if not any(ds.files[s][p.run] is not None for s in members for p in gp.plans):
            empty.append(name)
            continue
        w = target.subject(name, ds.n_voxels)
        for plan in gp.plans:
            paths = [ds.files[s][plan.run] for s in members if ds.files[s][plan.run] is not None]
            mean = _average_run(ds.space, paths, plan, bool(opts["zscore"]))
            if mean is not None:
                trs = np.arange(plan.shift, plan.shift + plan.n_frames)  # TR t <-> frame t - shift
                w.append(mean[trs], plan.image_of_frame, plan.split_of_frame)
        w.finish(
            coords,
            rois=rois,
            attrs={
                "members": len(members),
                "delay_s": float(opts["delay_s"]),
                "tr_s": float(ds.tr),
                "space": opts["space"],
                "movie_versions": ",".join(v.name for v in gp.group.versions),
                **grid,
            },
            layout=layout,
        )
    return empty


@dataclass
class Opened:
    """Everything read before any data is written: run files and their lengths, movie versions and content
    groups, dropped runs, frame plans per group, and the grayordinate/voxel space."""

    opts: dict
    files: dict[str, dict[int, Path | None]]  # subject -> run -> file (None: missing or dropped)
    assigned: dict[str, MovieVersion]
    planned: list[GroupPlan]
    missing: list[tuple[str, int]]
    dropped: list[dict]
    tr: float
    space: Any  # CiftiSpace or VolumeSpace

    @property
    def n_voxels(self) -> int:
        return self.space.columns.size if self.opts["space"] == "cifti" else len(self.space.ijk)

    def units(self) -> list[tuple[str, list[str], GroupPlan]]:
        """(store subject, subjects whose runs it holds, its group's plan): group averages or single subjects."""
        if self.opts["group_average"]:
            return [(gp.group.name, gp.group.subjects, gp) for gp in self.planned]
        return [(s, [s], gp) for gp in self.planned for s in gp.group.subjects]


def open_dataset(root: str | Path, options: dict | None) -> Opened:
    """Find the runs, movie versions and clip timing, check run lengths and plan the frames, as :func:`prepare`
    will, reading only headers, movie files and the ROI file."""
    root = Path(root)
    opts = resolve_options(ADAPTER, options, DEFAULTS)
    check_choice(ADAPTER, "space", opts["space"], ["cifti", "volume"])
    check_choice(ADAPTER, "short_runs", opts["short_runs"], ["drop", "error"])
    runs = [int(r) for r in as_list(opts["runs"])]
    subjects = _subjects(root, opts)
    files = {s: {r: _run_file(root, s, r, opts) for r in runs} for s in subjects}
    present = [s for s in subjects if any(files[s].values())]
    if not present:
        raise DatasetFileNotFoundError(
            f"{root}: no {opts['space']} run files for subjects {subjects[:5]}. Expected layout: {LAYOUT}"
        )
    files = {s: files[s] for s in present}
    missing = [(s, r) for s in present for r in runs if files[s][r] is None]
    if missing:
        warn(f"{ADAPTER}: {len(missing)} subject runs missing (e.g. {missing[:3]}); averaged over the others")
    lengths, tr = _lengths(files, opts["space"])

    stim_dir = _stimulus_dir(root, opts)
    assigned = assign_versions(present, find_movie_versions(stim_dir, opts), stim_dir, opts)
    groups = content_groups(assigned, runs, stim_dir, opts)
    dropped = check_run_lengths(groups, files, lengths, runs, opts)
    groups = [g for g in groups if g.runs]
    if not groups:
        raise DatasetFileNotFoundError(f"{root}: no usable run file is left (see the warnings). Expected: {LAYOUT}")
    planned = _plan_groups(groups, tr, opts)

    first_subject, first_file = next((s, p) for s in present for p in files[s].values() if p is not None)
    space = (
        CiftiSpace(first_file, root, first_subject, opts) if opts["space"] == "cifti" else VolumeSpace(first_file, opts)
    )
    return Opened(opts, files, assigned, planned, missing, dropped, tr, space)


def prepare(root, out, *, image_size: int, options: dict) -> dict:
    """Prepare the HCP 7T movie runs under ``root`` into the store ``out``."""
    ds = open_dataset(root, options)
    opts, planned, assigned = ds.opts, ds.planned, ds.assigned
    coords, rois = ds.space.coords(), ds.space.rois()
    images = [im for gp in planned for im in gp.images]
    report: dict[str, Any] = {
        "dataset": ADAPTER,
        "n_images": len(images),
        "runs": [int(r) for r in as_list(opts["runs"])],
        "tr_s": ds.tr,
        "subjects_averaged": len(ds.files) if opts["group_average"] else 0,
        "movie_versions": {
            v.name or str(v.folder): [s for s in ds.files if assigned[s] == v] for v in dict.fromkeys(assigned.values())
        },
        "groups": {
            gp.group.name: {
                "versions": [v.name for v in gp.group.versions],
                "subjects": gp.group.subjects,
                "runs": gp.group.runs,
                "n_trs": gp.group.n_trs,
            }
            for gp in planned
        },
        "missing_runs": [{"subject": s, "run": r} for s, r in ds.missing],
        "dropped_runs": ds.dropped,
        # the first `shift` TRs of a run have no frame 4 s earlier; TRs past the movie's end have none either
        "trs_without_frame": {gp.group.name: {p.run: p.n_trs - p.n_frames for p in gp.plans} for gp in planned},
    }
    frames = (frame for gp in planned for frame in _frames(gp.images, gp.group.movies))
    with StoreWriter(out, name=opts["name"], modality="fmri", source=ADAPTER, image_size=image_size) as writer:
        writer.write_images(frames, [name for name, _, _ in images])
        target = DirectTarget(writer)
        report["subjects_without_runs"] = _write_subjects(target, ds, coords, rois)
        report["subjects"] = target.reports
    return report


def check(root: Path, options: Mapping[str, Any], *, read_data: bool = True) -> list[CheckRow]:
    """One row per subject or group average the store would hold, opened as :func:`prepare` opens it (runs
    streamed with ``read_data``); nothing written."""
    ds = open_dataset(root, dict(options))
    rows = []
    for name, members, gp in ds.units():
        plans = [p for p in gp.plans if any(ds.files[s][p.run] is not None for s in members)]
        if not plans:
            continue  # prepare leaves such a subject out too (report: subjects_without_runs)
        codes = np.concatenate([p.split_of_frame for p in plans])
        images = len(np.unique(np.concatenate([p.image_of_frame for p in plans])))
        nan = None
        if read_data:
            runs = (
                (ds.space.read(ds.files[s][p.run], p.n_trs) for s in members if ds.files[s][p.run] is not None)
                for p in plans
            )
            nan = nan_columns((x for per_run in runs for x in per_run), ds.n_voxels)
        rows.append(check_row(ADAPTER, name, codes, images, ds.n_voxels, nan))
    return rows


# The terms of use the data carry (docs/sharing.md gives the source); a model card repeats them.
TERMS = "WU-Minn HCP Open Access Data Use Terms, accepted in ConnectomeDB (humanconnectome.org): no attempt to identify participants, no redistribution of the data, acknowledge the HCP in publications; movie clips are copyrighted material shown for research"

FORMAT = DatasetAdapter(name=ADAPTER, defaults=DEFAULTS, prepare=prepare, check=check, terms=TERMS)
