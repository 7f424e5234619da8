"""Compound figure -> panels by recursive X-Y cuts along uniform gutters (REFERENCE.md s. 6).

A gutter is a run of rows (or columns) that are uniform and of the figure's background colour,
decided by which kind of full-length uniform line the figure has more of: on a light figure
only light lines count (so the dark background of a fluorescence panel is never taken for a
gutter), on a dark frame only near-black, almost exactly flat lines, or lines averaging near 0
(a drawn black gutter that JPEG made ring).  A gutter must also sit between two panel edges:
full lines of content on both sides (see ``_panel_edges``), which stops cuts through the
background of a single photo; on a dark frame a drawn black band between clearly brighter lines
also counts (``_drawn_dark_band``: panels whose dark background reaches their edges).  Pieces
smaller than the minimum panel size (labels, captions, thin strips) are left out.  A piece with
no gutter may still be a montage with no border (ImageJ's default): a grid of equal cells whose
borders are steps in the pixels (``_grid_cells``).  A final panel that is an image inset in a
plot's grey panel background (ggplot2's facets) loses that frame and what lies outside it
(``_frame``).
"""

from __future__ import annotations

from functools import cache
from typing import Callable

import numpy as np

Box = tuple[int, int, int, int]  # y0, y1, x0, x1 (pixel, end-exclusive)
PAPER_TOL = 12      # grey levels: a light margin this close to the paper's level is trimmed
# A drawn black gutter in a JPEG-compressed figure is not flat: the compression rings next to
# bright panel edges.  Such a line still averages near 0 and stays below DRAWN_DARK_MAX; the
# dark background inside a fluorescence photo averages higher (its camera offset and noise).
DRAWN_DARK_MEAN = 2.0
DRAWN_DARK_MAX = 16
DRAWN_DARK_STEP = 3.0   # a drawn dark band's neighbour lines average at least this much brighter


def _uniform_lines(block: np.ndarray, axis: int, light_bg: bool, light_tol: int, dark_tol: int) -> np.ndarray:
    """Boolean per row (axis=1) or column (axis=0): is this line a gutter?"""
    lo = block.min(axis=axis).astype(np.int16)
    hi = block.max(axis=axis).astype(np.int16)
    if light_bg:
        return (lo >= 200) & (hi - lo <= light_tol)
    drawn = (block.mean(axis=axis) <= DRAWN_DARK_MEAN) & (hi <= DRAWN_DARK_MAX)
    return ((hi <= 55) & (hi - lo <= dark_tol)) | drawn


def background_is_light(grey: np.ndarray, light_tol: int = 24, dark_tol: int = 2) -> bool | None:
    """Which kind of gutter this figure uses: True (light), False (dark) or None (neither).

    Decided by which kind of uniform line, across the whole figure, is more common.
    """
    light = sum(int(_uniform_lines(grey, a, True, light_tol, dark_tol).sum()) for a in (0, 1))
    dark = sum(int(_uniform_lines(grey, a, False, light_tol, dark_tol).sum()) for a in (0, 1))
    if light == 0 and dark == 0:
        return None
    return light >= dark


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """Start/end (exclusive) of the True runs of a 1-D mask."""
    if not mask.any():
        return []
    d = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(d == 1), np.flatnonzero(d == -1)))


def _trim(grey: np.ndarray, box: Box, light_bg: bool, light_tol: int, dark_tol: int,
          paper: int | None = None) -> Box | None:
    """The box without its border lines of gutter colour.  On a light figure only lines near the
    paper's own grey level (``paper``) go: a bright-field panel's light background stays."""
    y0, y1, x0, x1 = box
    block = grey[y0:y1, x0:x1]

    def margin(axis: int) -> np.ndarray:
        m = _uniform_lines(block, axis, light_bg, light_tol, dark_tol)
        if light_bg and paper is not None:
            m &= np.abs(np.median(block, axis=axis) - paper) <= PAPER_TOL
        return m

    rows, cols = ~margin(1), ~margin(0)
    if not rows.any() or not cols.any():
        return None
    ry, rx = np.flatnonzero(rows), np.flatnonzero(cols)
    return y0 + int(ry[0]), y0 + int(ry[-1]) + 1, x0 + int(rx[0]), x0 + int(rx[-1]) + 1


def _panel_edges(block: np.ndarray, axis: int, a: int, b: int, diff: int = 10, fill: float = 0.5) -> bool:
    """Does the gutter [a, b) sit between two panel *edges*?

    A real panel ends in a full line of content that differs from the gutter colour; background
    inside a photo (the dark field of a fluorescence image, the white of a bright-field one)
    fades out instead, so the lines next to it are mostly gutter-coloured.
    """
    n = block.shape[0] if axis == 1 else block.shape[1]
    if a == 0 or b >= n:
        return False
    line = (lambda i: block[i]) if axis == 1 else (lambda i: block[:, i])
    value = float(np.median(line(a)))
    return all(float(np.mean(np.abs(line(i).astype(np.int16) - value) > diff)) >= fill for i in (a - 1, b))


def _flat_core(block: np.ndarray, axis: int, a: int, b: int, min_gutter: int) -> tuple[int, int]:
    """The longest perfectly flat part of the gutter run [a, b) (a drawn gutter), when there is one
    at least ``min_gutter`` wide; else the run itself.  A bright-field panel's light background
    can pass for gutter next to the real, flat one: it must not be counted in."""
    g = block[a:b] if axis == 1 else block[:, a:b].T
    flat = (g.max(axis=1).astype(np.int16) - g.min(axis=1)) <= 1
    runs = [(a + s, a + e) for s, e in _runs(flat) if e - s >= min_gutter]
    return max(runs, key=lambda r: r[1] - r[0]) if runs else (a, b)


def _drawn_dark_band(block: np.ndarray, axis: int, a: int, b: int) -> bool:
    """Is the dark run [a, b) a drawn black gutter: near 0 on average, with both neighbouring
    lines clearly brighter on average?  (A panel whose dark background touches the gutter has
    too few content pixels on its edge line for ``_panel_edges``, but its background sits above
    the drawn black; a dark band inside one photo has its neighbours' level.)"""
    n = block.shape[0] if axis == 1 else block.shape[1]
    if a == 0 or b >= n:
        return False
    mean = (lambda i, j: float(block[i:j].mean())) if axis == 1 else (lambda i, j: float(block[:, i:j].mean()))
    level = mean(a, b)
    return level <= DRAWN_DARK_MEAN and min(mean(a - 1, a), mean(b, b + 1)) >= level + DRAWN_DARK_STEP


# A drawn gutter, even JPEG-compressed, keeps nearly all its pixels at its one grey level (black,
# or the paper's white); the edge line of a panel beside it does not, even when that panel's own
# background is only 2-4 levels away (a fluorescence field's camera offset; an inverted or
# bright-field panel's light background).  JPEG blurs the step over a line or two between them.
LEVEL_TOL = {False: 1, True: 2}    # grey levels from the gutter's level: dark / light figures
ON_LEVEL = 0.8      # share of a drawn gutter line's pixels at that level, at least
OFF_LEVEL = 0.5     # ... and of the panel edge lines on both sides of it, at most
TRANSITION = 2      # lines between the two, at most


def _drawn_core(block: np.ndarray, axis: int, a: int, b: int, min_gutter: int, light_bg: bool) -> tuple[int, int] | None:
    """The widest part of the uniform run [a, b) drawn at one grey level (the run's darkest on a
    dark figure, its lightest on a light one) with a panel edge line on both sides, lines mostly
    off that level, at most ``TRANSITION`` lines away.  None when there is no such part at least
    ``min_gutter`` wide."""
    n = block.shape[0] if axis == 1 else block.shape[1]
    lo, hi = max(a - 1 - TRANSITION, 0), min(b + 1 + TRANSITION, n)
    lines = (block[lo:hi] if axis == 1 else block[:, lo:hi].T).astype(np.int16)
    level = int(np.percentile(lines[a - lo:b - lo], 95 if light_bg else 5))
    share = (np.abs(lines - level) <= LEVEL_TOL[light_bg]).mean(axis=1)
    off = share <= OFF_LEVEL

    def edge(i: int, step: int) -> bool:     # a panel edge line within reach of line i (block index)
        return any(lo <= j < hi and off[j - lo] for j in range(i, i + step * (TRANSITION + 1), step))

    cores = [(max(lo + s, a), min(lo + e, b)) for s, e in _runs(share >= ON_LEVEL)]
    cores = [(s, e) for s, e in cores if e - s >= min_gutter]
    for s, e in sorted(cores, key=lambda r: r[0] - r[1]):
        if s > 0 and e < n and edge(s - 1, -1) and edge(e, 1):
            return s, e
    return None


# A plotting tool's figure (matplotlib, R, Prism, ImageJ with labels) puts titles, tick labels,
# panel letters and tick marks in the white space between its panels: those lines are paper with
# a few marks on it, not gutter and not panel edge.  A line is such an annotation line when at
# least ANNOTATION_SHARE of its pixels are within ANNOTATION_TOL levels of the paper's (JPEG rings
# around the glyphs).  A panel edge line there (a drawn axes frame, an image's edge) has at least
# EDGE_SHARE of its pixels more than EDGE_DIFF levels off the paper in runs of EDGE_RUN pixels
# or more, unbroken but for gaps of EDGE_GAP pixels (the white grid lines across a ggplot2
# panel's grey margin): a row of a light photo crossing many dark cells (an inverted
# fluorescence field) breaks into short runs with wider gaps.
ANNOTATION_SHARE = 0.4
ANNOTATION_TOL = 4
EDGE_SHARE = 0.5
EDGE_DIFF = 10
EDGE_RUN = 48
EDGE_GAP = 2
FILLED = 0.75


def _annotation_lines(block: np.ndarray, axis: int, paper: int) -> np.ndarray:
    """Per row (axis=1) or column (axis=0): is it an annotation line (mostly paper)?"""
    d = np.abs(block.astype(np.int16) - paper)
    return (d <= ANNOTATION_TOL).mean(axis=axis) >= ANNOTATION_SHARE


def _edge_line(line: np.ndarray, paper: int) -> bool:
    """Is this row or column a panel edge: mostly off the paper, in long runs unbroken but for
    gaps of EDGE_GAP pixels at most (the white grid lines crossing a ggplot2 panel's grey
    margin)?"""
    off = np.abs(line.astype(np.int16) - paper) > EDGE_DIFF
    if off.mean() < EDGE_SHARE:
        return False
    bridged = off.copy()
    for s, e in _runs(~off):
        if 0 < s and e < len(off) and e - s <= EDGE_GAP:
            bridged[s:e] = True
    return sum(e - s for s, e in _runs(bridged) if e - s >= EDGE_RUN) >= EDGE_SHARE * len(line)


def _annotated_gutter(block: np.ndarray, axis: int, note: np.ndarray, a: int, b: int, paper: int,
                      min_piece: int) -> tuple[int, int] | None:
    """The white run [a, b) as a gutter of an annotated figure: the lines next to it are
    annotations (titles, tick labels, letters: paper with a few marks), and beyond them, on
    both sides, lies a panel edge followed by content: at least FILLED of the next 2 x
    ``min_piece`` lines are not annotation lines (an image fills its box, a colour bar beside it
    is thin; a glyph's stem in a logo or a diagram's box outline is followed by paper).  The
    pieces keep their annotations (``_strip_annotations`` takes them off a final panel).  A
    photo's own white background fades into its content through lines that are neither
    paper-exact nor edges, and is not cut.  ``note``: the block's ``_annotation_lines``."""
    n = len(note)
    lo, hi = a, b
    while lo > 0 and note[lo - 1]:
        lo -= 1
    while hi < n and note[hi]:
        hi += 1
    if (lo, hi) == (a, b) or lo < min_piece or n - hi < min_piece:
        return None
    before, after = note[max(lo - 2 * min_piece, 0):lo], note[hi:hi + 2 * min_piece]
    if max(before.mean(), after.mean()) > 1 - FILLED:
        return None
    line = (lambda i: block[i]) if axis == 1 else (lambda i: block[:, i])
    return (a, b) if _edge_line(line(lo - 1), paper) and _edge_line(line(hi), paper) else None


def _strip_annotations(grey: np.ndarray, box: Box, paper: int) -> Box:
    """A final panel of a light figure without the annotations around it: on each side, the
    lines of paper with a few marks (a title, tick labels, a letter) up to a panel edge line
    (an axes frame or the image's edge) go.  A side that reaches no edge that way is kept."""
    y0, y1, x0, x1 = box
    block = grey[y0:y1, x0:x1]
    out = [y0, y1, x0, x1]
    for axis, (i0, i1) in ((1, (0, 1)), (0, (2, 3))):
        note = _annotation_lines(block, axis, paper)
        line = (lambda i: block[i]) if axis == 1 else (lambda i: block[:, i])
        n = len(note)
        k = 0
        while k < n and note[k]:
            k += 1
        if 0 < k < n and _edge_line(line(k), paper):
            out[i0] = box[i0] + k
        k = n
        while k > 0 and note[k - 1]:
            k -= 1
        if 0 < k < n and _edge_line(line(k - 1), paper):
            out[i1] = box[i0] + k
    if out[1] - out[0] < 1 or out[3] - out[2] < 1:
        return box
    return out[0], out[1], out[2], out[3]


# A plot's panel background around an image inset in it: R's ggplot2 draws a raster on a grey
# panel (grey92, white grid lines) and expands each axis by 5 %, so a raster figure's panel is the
# image inside a flat grey frame, with the facet's title above it and tick labels beside it.
# Trimmed, an inverted copy's panel is the source's negative (the frame is not inverted with the
# image: with it, the negative was not within the threshold) and every copy's box is the image's
# own.  A frame line is flat: FRAME_SHARE of its pixels within FRAME_TOL of its two commonest
# levels (the panel's grey and its grid lines), the commonest a mid grey (FRAME_GREY: not the
# black of a fluorescence field nor the white of a bright-field one, which can reach a photo's
# edge flat) or white (a grid line along it).  On every side, within FRAME_REACH of the edge
# (annotations may lie outside the frame), the image starts where a run of frame lines gives way
# to FRAME_RUN lines that are not; each run is FRAME_MIN_PX to FRAME_MAX of the side thick, the
# left and right ones as thick (FRAME_SKEW), those of the left, right and bottom of one grey, and
# the image's edge lines FRAME_EDGE (on average) or more off that grey: a straight edge, not a
# photo's flat background fading into its content.  A frame missing on one side (an image flush
# with its panel's edge) leaves the panel as it is.  Set looking at figure_tools.py --style ggplot
# (seeds 41-43) and split_layouts.py (docs/BENCHMARKS.md, "The grey frame trimmed").
FRAME_TOL = 4
FRAME_SHARE = 0.9
FRAME_GREY = (24, 240)
FRAME_REACH = 0.35
FRAME_RUN = 16
FRAME_MIN_PX = 2
FRAME_MAX = 0.15
FRAME_SKEW = 2          # px, or 2 % of the width
FRAME_EDGE = 0.6        # on average over the four sides, and
FRAME_EDGE_SIDE = 0.4   # on each (an image's light corner may match the frame's grey)
FRAME_SAMPLE = 512      # pixels read along a line (evenly spaced): a big scan's lines are subsampled


def _frame_lines(block: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row (axis=1) or column (axis=0): is it flat (see FRAME_TOL), and its commonest level."""
    lines = block if axis == 1 else block.T
    lines = lines[:, ::max(1, lines.shape[1] // FRAME_SAMPLE)]
    n, m = lines.shape
    hist = np.bincount((np.arange(n)[:, None] * 256 + lines).ravel(), minlength=n * 256).reshape(n, 256)
    csum = np.concatenate([np.zeros((n, 1), np.int64), np.cumsum(hist, 1)], 1)
    lvl = np.arange(256)
    win = csum[:, np.minimum(lvl + FRAME_TOL + 1, 256)] - csum[:, np.maximum(lvl - FRAME_TOL, 0)]
    first = win.argmax(1)
    rest = np.where(np.abs(lvl[None, :] - first[:, None]) <= 2 * FRAME_TOL, 0, win)
    return win[np.arange(n), first] + rest.max(1) >= FRAME_SHARE * m, first


def _frame_side(grey_line: np.ndarray, white_line: np.ndarray) -> tuple[int, int] | None:
    """(where the image starts, the frame's thickness in lines of its grey) counted from the start
    of one side's lines (outermost first; ``grey_line``: flat lines of the frame's grey,
    ``white_line``: flat white ones, its grid lines), or None when no frame is found there.  The
    frame's run may be broken by one line (a JPEG figure's ringing); three white lines in a row
    end it (the paper or an annotation's margin beyond it)."""
    frame = grey_line | white_line
    n = len(frame)
    for i in range(1, int(FRAME_REACH * n) + 1):
        if frame[i - 1] and not frame[i:i + FRAME_RUN].any():
            k = i
            while k > 0 and (frame[k - 1] or k > 1 and frame[k - 2]) and not white_line[max(k - 3, 0):k].all():
                k -= 1
            return i, int(grey_line[k:i].sum())
    return None


def _frame(grey: np.ndarray, box: Box) -> Box:
    """``box`` without a plot's panel background framing an image inset in it (see FRAME_TOL) and
    what lies outside that frame, or as it is."""
    y0, y1, x0, x1 = box
    block = grey[y0:y1, x0:x1]
    h, w = block.shape
    if min(h, w) < 4 * FRAME_RUN:
        return box
    # the frame's grey: on each side, the level of the outermost flat mid-grey line (a title box
    # may be the top's); their median.  The rows first: most panels have no such line there
    outer = []
    for axis in (1, 0):
        flat, lvl = _frame_lines(block, axis)
        for f, v in ((flat, lvl), (flat[::-1], lvl[::-1])):
            k = np.flatnonzero(f & (v >= FRAME_GREY[0]) & (v <= FRAME_GREY[1]))
            if not len(k) or k[0] > FRAME_REACH * len(f):
                return box
            outer.append(int(v[k[0]]))
        if axis == 1:
            flat_r, lvl_r = flat, lvl
    flat_c, lvl_c = flat, lvl
    grey_level = int(np.median(outer))
    g_r, w_r = flat_r & (np.abs(lvl_r - grey_level) <= 2 * FRAME_TOL), flat_r & (lvl_r > FRAME_GREY[1])
    g_c, w_c = flat_c & (np.abs(lvl_c - grey_level) <= 2 * FRAME_TOL), flat_c & (lvl_c > FRAME_GREY[1])
    sides = [_frame_side(g_r, w_r), _frame_side(g_r[::-1], w_r[::-1]),
             _frame_side(g_c, w_c), _frame_side(g_c[::-1], w_c[::-1])]
    if any(s is None for s in sides):
        return box
    (top, tt), (bottom, tb), (left, tl), (right, tr) = sides
    if min(tt, tb, tl, tr) < FRAME_MIN_PX or max(tt, tb) > FRAME_MAX * h or max(tl, tr) > FRAME_MAX * w \
            or abs(tl - tr) > max(FRAME_SKEW, 0.02 * w):
        return box
    levels = [float(np.median(block[top:h - bottom, left - tl:left])),
              float(np.median(block[top:h - bottom, w - right:w - right + tr])),
              float(np.median(block[h - bottom:h - bottom + tb, left:w - right]))]
    if max(levels) - min(levels) > 2 * FRAME_TOL or not FRAME_GREY[0] <= min(levels) <= FRAME_GREY[1]:
        return box
    # the image's edge, on every side: its first lines (one may blend into the frame) mostly off
    # the frame's grey; a bright-field photo's own flat background fades into its content instead
    inner, g = block[top:h - bottom, left:w - right], int(np.median(levels))
    edges = [(inner[:2], 1), (inner[-2:], 1), (inner[:, :2], 0), (inner[:, -2:], 0)]
    share = [float((np.abs(e.astype(np.int16) - g) > 2 * FRAME_TOL).mean(ax).max()) for e, ax in edges]
    if min(share) < FRAME_EDGE_SIDE or sum(share) / 4 < FRAME_EDGE:
        return box
    return y0 + top, y1 - bottom, x0 + left, x1 - right


def _gutter(block: np.ndarray, axis: int, a: int, b: int, min_gutter: int, light_bg: bool = True,
            paper: int | None = None, notes: Callable[[], np.ndarray] | None = None,
            min_piece: int = 48) -> tuple[int, int] | None:
    """The uniform run [a, b) as a gutter between two panel edges, or its flat core (see
    ``_flat_core``) when only that one is, or (dark figures) a drawn black band, or its part
    drawn at one level between two panel edges (``_drawn_core``), or (light figures) a white
    run between annotations with panel edges beyond them (``_annotated_gutter``; ``notes``
    gives the block's ``_annotation_lines`` along this axis, ``paper`` the paper's level); None
    when none."""
    if b - a < min_gutter:
        return None
    if _panel_edges(block, axis, a, b) or (not light_bg and _drawn_dark_band(block, axis, a, b)):
        return a, b
    core = _flat_core(block, axis, a, b, min_gutter)
    if core != (a, b) and _panel_edges(block, axis, *core):
        return core
    drawn = _drawn_core(block, axis, a, b, min_gutter, light_bg)
    if drawn is None and light_bg and paper is not None and notes is not None:
        return _annotated_gutter(block, axis, notes(), a, b, paper, min_piece)
    return drawn


# A montage drawn with no border (ImageJ's Make Montage, border 0 or 1 px) has no gutter, but
# each cell border is a step: the mean absolute difference between the two lines on either side
# of it stands out from the lines around it, at exactly the places an equal division puts it.
SEAM_RATIO = 3.0        # each seam's step over its surroundings', at least: over the median step
                        # of the lines 3-12 away and over that of the lines 8, 16 and 24 away on
                        # either side (JPEG's block edges; a median, so a letter burned in near
                        # the seam does not hide it)
SEAM_RATIO_ALONE = 5.0  # ... when the division has one seam in all (two images side by side)
SEAM_PROMINENCE = 1.2   # the seams' median step over the (n - 1)-th strongest step elsewhere along
                        # the axis, at least, on one axis: a periodic texture (a brick wall, a
                        # lattice) has as many lines as strong between the places a division picks
SEAM_FLOOR = 0.5        # grey levels: the surroundings' step counts as at least this
SEAM_MAX_CELLS = 8      # cells along one axis, at most
SEAM_DRAWING = 0.4      # share of a piece's pixels at the paper's white above which it is a
                        # drawing (a plot, a chart), never divided by seams


def _equal_division(block: np.ndarray, axis: int, min_cell: int) -> tuple[int, float, bool]:
    """(n, strength, prominent): the most equal cells along ``axis`` (1: side by side) whose
    every border is a seam, the weakest seam's ratio, and whether the seams stand out of the
    whole axis (SEAM_PROMINENCE; a prominent division is preferred); (1, 0.0, False) when no
    division into 2+ cells is."""
    a = (block if axis == 1 else block.T).astype(np.float32)
    length = a.shape[1]
    step = np.abs(np.diff(a, axis=1)).mean(axis=0)     # step[x]: lines x, x + 1
    best = (1, 0.0, False)
    for n in range(2, SEAM_MAX_CELLS + 1):
        if length / n < min_cell:
            break
        weakest, seams = np.inf, []
        for k in range(1, n):
            at = k * length / n       # the border; a resampled or 1-px-bordered one may sit a line off
            near = [x for x in {int(np.floor(at)) - 1, int(np.floor(at)), int(np.ceil(at)) - 1} if 12 <= x < length - 13]
            if not near:
                weakest = 0.0
                break
            x = max(near, key=lambda i: step[i])
            seams.append(x)
            around = np.r_[step[x - 12:x - 2], step[x + 3:x + 13]]
            phase = step[[x + d for d in (-24, -16, -8, 8, 16, 24) if 0 <= x + d < length - 1]]
            weakest = min(weakest, float(step[x] / max(np.median(around), np.median(phase), SEAM_FLOOR)))
            if weakest < SEAM_RATIO:
                break
        if weakest < SEAM_RATIO:
            continue
        others = np.ones(len(step), bool)
        others[:2] = others[-2:] = False
        for x in seams:
            others[x - 3:x + 4] = False
        rival = np.sort(step[others])[-(n - 1)]     # as many lines elsewhere as strong as the seams?
        prominent = bool(np.median(step[seams]) >= SEAM_PROMINENCE * max(rival, SEAM_FLOOR))
        if prominent or not best[2]:
            best = (n, weakest, prominent)
    return best


def _grid_cells(grey: np.ndarray, box: Box, min_h: int, min_w: int, paper: int | None) -> list[Box]:
    """The cells of a borderless montage filling ``box``, in reading order; [box] when it is not one."""
    y0, y1, x0, x1 = box
    block = grey[y0:y1, x0:x1]
    if paper is not None and float(np.mean(block >= paper - ANNOTATION_TOL)) > SEAM_DRAWING:
        return [box]
    (cols, sc, pc), (rows, sr, pr) = _equal_division(block, 1, min_w), _equal_division(block, 0, min_h)
    if not (cols > 1 and pc or rows > 1 and pr) or (cols * rows == 2 and max(sc, sr) < SEAM_RATIO_ALONE):
        return [box]                # one axis's seams must stand out; the other's may not (a
                                    # scale bar burned into every cell is a strong line too)
    h, w = y1 - y0, x1 - x0
    return [(y0 + round(r * h / rows), y0 + round((r + 1) * h / rows), x0 + round(c * w / cols), x0 + round((c + 1) * w / cols))
            for r in range(rows) for c in range(cols)]


# A western-blot strip printed on white: one band row on a background a few levels under the
# paper's white.  That background is uniform and light: it joins the white gap between two
# strips as gutter, or the trim takes it as the paper's margin, and what is left of the strip
# is its band row, thinner than a panel.  Such a piece keeps (takes back) its background rows,
# those at least STRIP_BG levels under the paper up to the gap's paper-white, when they make it
# a panel at least STRIP_ASPECT times as wide as it is tall, STRIP_BG_SHARE of it or more
# background (a periodic texture's row between two light lines is not a band on its
# background); its rows are then never trimmed or cut again, and the paper-white columns at
# its ends (its label) go.  Only figures with a piece that would otherwise be lost change.
STRIP_BG = 3
STRIP_ASPECT = 4.0
STRIP_BG_SHARE = 0.2


def _strip_rows(rows_median: Callable[[], np.ndarray], top: int, width: int, edges: list[int], i: int,
                paper: int, min_h: int, trim: Callable[[int, int], Box | None]) -> tuple[int, int, bool]:
    """The piece between ``edges[i]`` and ``edges[i + 1]`` (rows of a block ``width`` wide; the
    gutters lie between the other consecutive edges) as (a, b, is_strip): with its background
    rows when it is a strip that the trim would leave thinner than a panel (see STRIP_BG), else
    as it is.  ``rows_median()``: the row medians from ``top`` rows above the block (the margin
    its own trim took off, where the first strip's background may lie) to as far below it, read
    only for such a thin piece; ``trim(a, b)``: the piece as the splitter trims it (None: nothing
    left)."""
    a, b = edges[i], edges[i + 1]
    t = trim(a, b)
    content = 0 if t is None else t[1] - t[0]
    if content >= min_h:
        return a, b, False
    med = rows_median()
    lo = edges[i - 1] if i > 0 else -top
    hi = edges[i + 2] if i + 2 < len(edges) else len(med) - top
    while a > lo and med[a - 1 + top] <= paper - STRIP_BG:
        a -= 1
    while b < hi and med[b + top] <= paper - STRIP_BG:
        b += 1
    if b - a >= min_h and width >= STRIP_ASPECT * (b - a) and content <= (1 - STRIP_BG_SHARE) * (b - a):
        return a, b, True
    return edges[i], edges[i + 1], False


def _strip_labels(grey: np.ndarray, box: Box, paper: int) -> Box:
    """A blot strip's piece (``_strip_rows``) without the columns of paper-white at its ends, which
    hold the labels printed beside it: a column goes while ANNOTATION_SHARE of its pixels or more
    are within a level of the paper (the strip's own background sits STRIP_BG under it)."""
    y0, y1, x0, x1 = box
    white = (grey[y0:y1, x0:x1] >= paper - 1).mean(axis=0) >= ANNOTATION_SHARE
    keep = np.flatnonzero(~white)
    if len(keep) == 0:
        return box
    return y0, y1, x0 + int(keep[0]), x0 + int(keep[-1]) + 1


def split_panels(grey: np.ndarray, min_px: int = 48, min_frac: float = 0.08, min_gutter: int = 2,
                 light_tol: int = 24, dark_tol: int = 2, max_depth: int = 6) -> list[Box]:
    """Panels of a figure as pixel boxes, in reading order; [] when the figure is blank.

    A single box covering the (trimmed) figure means it is not compound.  ``min_gutter`` is the
    narrowest gutter cut (2 px: an ImageJ montage drawn with a 2-px border is cut, panels that
    touch or are 1 px apart are not; docs/BENCHMARKS.md, "ImageJ montages").
    """
    h, w = grey.shape
    min_h = max(min_px, int(min_frac * h))
    min_w = max(min_px, int(min_frac * w))
    out: list[Box] = []
    light_bg = background_is_light(grey, light_tol, dark_tol)
    if light_bg is None:        # no uniform line at all: one photo, or a montage with no border
        return _grid_cells(grey, (0, h, 0, w), min_h, min_w, None)
    paper = int(np.percentile(grey, 99)) if light_bg else None     # the white of gutters and margins

    # each piece is trimmed once, though ``_strip_rows`` asks before ``cut`` does
    trim_at = cache(lambda box: _trim(grey, box, light_bg, light_tol, dark_tol, paper))

    def cut(box: Box, depth: int, keep_rows: bool = False) -> None:
        trimmed = trim_at(box)
        if trimmed is None:
            return
        y0, y1, x0, x1 = (box[0], box[1], *trimmed[2:]) if keep_rows else trimmed
        if y1 - y0 < min_h or x1 - x0 < min_w:
            return
        block = grey[y0:y1, x0:x1]
        if depth < max_depth:
            for axis in ((0,) if keep_rows else (1, 0)):  # rows first (horizontal gutters), then columns
                lines = _uniform_lines(block, axis, light_bg, light_tol, dark_tol)
                piece = min_h if axis == 1 else min_w
                notes = cache(lambda blk=block, ax=axis: _annotation_lines(blk, ax, paper)) if light_bg else None
                gutters = [g for g in (_gutter(block, axis, a, b, min_gutter, light_bg, paper, notes, piece)
                                       for a, b in _runs(lines)) if g]
                if not gutters:
                    continue
                edges = [0] + [x for g in gutters for x in g] + [len(lines)]
                if axis == 1 and light_bg:      # a blot strip may take its background rows back
                    med = cache(lambda bx=box, c0=x0, c1=x1: np.median(grey[bx[0]:bx[1], c0:c1], axis=1))
                    trim = lambda a, b, r0=y0, c0=x0, c1=x1: trim_at((r0 + a, r0 + b, c0, c1))  # noqa: E731
                    pieces = [_strip_rows(med, y0 - box[0], x1 - x0, edges, i, paper, min_h, trim)
                              for i in range(0, len(edges), 2)]
                else:
                    pieces = [(edges[i], edges[i + 1], False) for i in range(0, len(edges), 2)]
                big = [(a, b, strip) for a, b, strip in pieces if b - a >= (min_h if axis == 1 else min_w)]
                if len(big) < 2:
                    continue
                for a, b, strip in big:
                    sub = (y0 + a, y0 + b, x0, x1) if axis == 1 else (y0, y1, x0 + a, x0 + b)
                    cut(sub, depth + 1, keep_rows or strip)
                return
        if light_bg and depth > 0:
            strip_cut = _strip_labels if keep_rows else _strip_annotations
            y0, y1, x0, x1 = strip_cut(grey, (y0, y1, x0, x1), paper)
            if y1 - y0 < min_h or x1 - x0 < min_w:
                return
        if light_bg:
            y0, y1, x0, x1 = _frame(grey, (y0, y1, x0, x1))
        out.extend(_grid_cells(grey, (y0, y1, x0, x1), min_h, min_w, paper))

    cut((0, h, 0, w), 0)
    return out
