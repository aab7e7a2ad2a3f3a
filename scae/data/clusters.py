"""Leiden clusters of training cells, for the ``cluster`` negative sampling of a loss."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

# scanpy is imported inside the functions that use it: the training env (envs/torch.yaml)
# has no scanpy.


def training_clusters(
    x: sp.csr_matrix, is_train: np.ndarray, seed: int, n_pcs: int = 30
) -> pd.Categorical:
    """Leiden clusters learnt from training cells only; other cells join the nearest centroid.

    PCA (``n_pcs``, fit on training cells) → kNN graph of training cells → Leiden. Validation
    and test cells are assigned to the cluster whose training centroid is closest in PCA
    space, so held-out cells never shape the clusters.
    """
    import scanpy as sc
    from sklearn.decomposition import PCA

    n_pcs = min(n_pcs, x.shape[1] - 1, int(is_train.sum()) - 1)
    pca = PCA(n_components=n_pcs, svd_solver="arpack", random_state=seed).fit(x[is_train])
    scores = pca.transform(x)
    graph = ad.AnnData(obsm={"X_pca": scores[is_train].astype(np.float32)})
    sc.pp.neighbors(
        graph, use_rep="X_pca", random_state=seed, method="gauss", transformer="sklearn"
    )
    sc.tl.leiden(graph, random_state=seed, flavor="igraph", n_iterations=2)
    train_labels = graph.obs["leiden"].astype(int).to_numpy()
    centroids = np.stack(
        [scores[is_train][train_labels == c].mean(axis=0) for c in range(train_labels.max() + 1)]
    )
    nearest = ((scores[:, None, :] - centroids[None]) ** 2).sum(-1).argmin(axis=1)
    nearest[is_train] = train_labels
    return pd.Categorical(nearest.astype(str))
