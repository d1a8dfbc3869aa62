"""Which stars must be fitted together: overlapping fit boxes and their groups.

Two stars are coupled when their fit boxes share a pixel; a group is a connected
set of coupled stars (found with scipy's connected components), solved jointly.
Candidate pairs come from a k-d tree and are only rebuilt once stars have moved.
"""
from __future__ import annotations

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree


def candidate_pairs(x, y, hf, alive, margin=3.0):
    """Pairs of living stars that could overlap after moving up to ``margin`` px."""
    idx = np.flatnonzero(alive)
    if idx.size < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    tree = cKDTree(np.column_stack([x[idx], y[idx]]))
    pairs = tree.query_pairs(2 * float(hf[idx].max()) + 1.0 + margin, p=np.inf,
                             output_type="ndarray")
    if pairs.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return idx[pairs[:, 0]].astype(np.int64), idx[pairs[:, 1]].astype(np.int64)


def overlap_pairs(bx, by, hf, alive, cand):
    """Index pairs (i < j) of living stars whose fit boxes (centres bx, by) overlap."""
    a, b = cand
    if a.size == 0:
        return a, b
    ok = alive[a] & alive[b]
    a, b = a[ok], b[ok]
    reach = hf[a] + hf[b]
    ok = (np.abs(bx[a] - bx[b]) <= reach) & (np.abs(by[a] - by[b]) <= reach)
    return a[ok], b[ok]


def groups_of(n, pi, pj, alive):
    """Connected components of the overlap graph: (labels, order, starts)."""
    graph = coo_matrix((np.ones(pi.size), (pi, pj)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    labels = np.where(alive, labels, -1)
    return labels


def group_arrays(labels, members):
    """Order members by group label; return (order, gstart, group ids)."""
    lab = labels[members]
    order = members[np.argsort(lab, kind="stable")]
    lab_sorted = labels[order]
    uniq, first = np.unique(lab_sorted, return_index=True)
    gstart = np.append(first, order.size).astype(np.int64)
    return order.astype(np.int64), gstart, uniq


def pairs_by_group(labels, pi, pj, uniq):
    """Pairs inside the given groups, sorted by group; (pi, pj, pstart)."""
    if pi.size == 0:
        return pi, pj, np.zeros(uniq.size + 1, np.int64)
    gi = labels[pi]
    pos = np.searchsorted(uniq, gi)
    pos = np.clip(pos, 0, max(uniq.size - 1, 0))
    inside = (uniq.size > 0) & (uniq[pos] == gi) if uniq.size else np.zeros(gi.size, bool)
    pi, pj, pos = pi[inside], pj[inside], pos[inside]
    order = np.argsort(pos, kind="stable")
    pi, pj, pos = pi[order], pj[order], pos[order]
    pstart = np.searchsorted(pos, np.arange(uniq.size + 1)).astype(np.int64)
    return pi, pj, pstart
