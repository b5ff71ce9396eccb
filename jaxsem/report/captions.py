"""Captions for the report page: what each figure the writers draw shows, and what to look for.

    captions.caption("scree.png")   # -> "Explained variance per component ..."

Known file names are looked up exactly, then by prefix (``align_<norms>.png``,
``cumulative_<control>.png``); any other PNG gets a caption that names the file.
"""

from __future__ import annotations

_STEER_METHODS = ("Mean |off-target| change per unit on-target change on held-out words, one bar per "
                  "steering method with its 95% bootstrap interval, all at equal on-target strength")

# File name -> caption. One entry per figure that jaxsem.report.writers draws.
CAPTIONS: dict[str, str] = {
    "cosine.png": (
        "Cosines between the scales' directions (red positive, blue negative). Look for blocks of scales "
        "tagged with the same Osgood factor (E, P, A) that are more alike than scales of different factors; "
        "the title gives the mean |cosine| of random directions, the level that means no structure."),
    "scree.png": (
        "Explained variance per principal component of the words x scales matrix (solid, per component; "
        "dashed, cumulative) beside random directions and human norms. Look for whether the scales' "
        "cumulative curve rises above the purple band of random sets of WordNet antonym pairs: only then do "
        "the scales share more low-dimensional structure than any set of antonym pairs would."),
    "loadings.png": (
        "Varimax-rotated loadings of each scale on the first three components, labelled with its Osgood "
        "factor tag. Look for each component loading mainly on the scales of one factor (E, P or A); mixed "
        "columns mean the model's axes do not follow Osgood's."),
    "offtarget.png": (
        "Off-target effect D (change of another scale's rating per unit change of the steered scale) against"
        " the cosine of the steering and readout directions, one point per pair, with the least-squares line"
        " and the dotted line D = cos. Look for a tight rising line: steering one scale then moves the "
        "others in proportion to their cosine, the off-target law."),
    "offtarget_disjoint.png": (
        "The off-target law again, read with readout words that share no token with the steered scales' pole"
        " words. Look for whether the line survives: if it does, a shared token cannot be what makes it."),
    "offtarget_matrix.png": (
        "D for every steered scale (rows) read on every scale (columns). Look for off-diagonal cells far "
        "from zero and whether their pattern repeats the direction-cosine heatmap of the structure section."),
    "dose_response.png": (
        "Rating change against steering strength (site-norm units): thin lines per steered scale, black the "
        "mean on-target change, red dashed the mean |off-target| change. Look for on-target change that "
        "grows steadily with strength while the off-target change stays well below it."),
    "methods.png": (
        f"{_STEER_METHODS}. Look for methods whose bar and interval sit clearly below plain steering "
        "(grey)."),
    "methods_disjoint_readout.png": (
        f"{_STEER_METHODS}, read with readout words not used in fitting. Look for whether the methods' "
        "reduction of off-target change survives a readout the fit never saw."),
    "methods_heldout_readout.png": (
        f"{_STEER_METHODS}, read in a prompt template not used in fitting. Look for whether the ranking "
        "of the methods holds in a template the fit never saw."),
    "cumulative.png": (
        "Cumulative explained variance of the token scores on each direction set, dotted lines at 50, 80 and"
        " 90%. Look for how many components each set needs: antonym directions that need far fewer than "
        "random directions share low-dimensional structure."),
    "layers_alignment.png": (
        "Pearson r of each scale with the human column it is tagged with, at every site from the input "
        "embedding through each block's output to the output embedding, with 95% bands (words and pole words "
        "resampled) and the supervised probe's ceiling dashed. Look for the depth where each line peaks, "
        "how far above the static input embedding (the first point) it gets, and how near the ceiling."),
    "layers_pca.png": (
        "Cumulative variance of the first one, two and three principal components of the words x scales "
        "matrix at every site, with random directions' first three dotted. Look for the depths where the "
        "scales collapse onto few dimensions and whether that exceeds what random directions give there."),
    "geometry_scatter.png": (
        "Each point a pair of human norm columns: their correlation across the words both tables rate "
        "against the cosine of the two matching axes (left) and against the correlation of the words' "
        "projections on them (right), with the least-squares line; r, its bootstrap interval and the Mantel "
        "p in the titles. Look for a rising line: the axes then relate as the human judgements do. Pairs of "
        "scales that share pole words sit high by construction."),
    "geometry_matrices.png": (
        "The human inter-scale correlations (left) and the axis cosines (right) in the same scale order. "
        "Look for the same blocks in both: scales people rate alike should point alike in the model."),
    "layers_congruence.png": (
        "Tucker congruence of the varimax factors with the Evaluation, Potency and Activity tags at every "
        "site (1: a factor loads exactly on the scales of its tag). Look for the depth where the E/P/A "
        "structure is clearest and whether all three factors peak there together."),
}

# File-name prefix -> caption template ({rest}: the name between the prefix and ".png").
PREFIX_CAPTIONS: dict[str, str] = {
    "align_": (
        "Pearson r of each scale's direction with the human {rest} ratings, with 95% bootstrap intervals. "
        "Look for bars whose interval clears the grey band (the 95th percentile of |r| for random "
        "directions) and how near each comes to the black tick, the supervised probe's ceiling; rows whose "
        "scale is tagged with that column are the tests, the others cross-correlations."),
    "cumulative_": (
        "Cumulative explained variance of the token scores on each direction set in the {rest} control, "
        "dotted lines at 50, 80 and 90%. Look for whether the antonym sets still need fewer components than "
        "random directions once the control is applied."),
}


def caption(file_name: str) -> str:
  """What the figure ``file_name`` (a base name such as ``"scree.png"``) shows and what to look for."""
  if file_name in CAPTIONS:
    return CAPTIONS[file_name]
  stem = file_name[:-4] if file_name.lower().endswith(".png") else file_name
  for prefix, template in PREFIX_CAPTIONS.items():
    if stem.startswith(prefix) and len(stem) > len(prefix):
      return template.format(rest=stem[len(prefix):])
  return f"Figure {file_name}, written beside this summary (no caption is known for this file name)."


def rank(file_name: str) -> int:
  """Where ``file_name`` comes in reading order: known figures in ``CAPTIONS`` order, then the rest."""
  known = list(CAPTIONS) + list(PREFIX_CAPTIONS)
  if file_name in CAPTIONS:
    return known.index(file_name)
  prefix = next((p for p in PREFIX_CAPTIONS if file_name.startswith(p)), None)
  return known.index(prefix) if prefix else len(known)
