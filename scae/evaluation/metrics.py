"""Reconstruction metrics on held-out cells, all in the common space log1p(normalized).

For a test cell with truth x and reconstruction x̂ (both ∈ ℝ^G) and the training-mean profile
m̄:

* ``cosine``          cos(x̂, x) = x̂·x / (‖x̂‖‖x‖), 0 when either is the zero vector;
* ``centred_cosine``  cos(x̂ − m̄, x − m̄): does the model capture how the cell *differs* from
  the average cell? (the mean profile itself scores 0 here);
* ``pearson``         cos(x̂ − mean_g x̂, x − mean_g x), per-cell Pearson correlation;
* ``mse``             mean_g (x̂_g − x_g)²;
* ``gene_pearson``    per gene, Pearson r across test cells; its median over genes whose
  truth and reconstruction both vary.

Count-space metrics map x̂ back to expected counts, μ_g = (exp(x̂_g) − 1)⁺ · ℓ / target_sum
(ℓ the cell's library size), and score the cell's raw counts c under them:

* ``poisson_nll``     Σ_g μ_g − c_g log μ_g + log Γ(c_g + 1), mean over cells;
* ``nb_nll``          −Σ_g log NB(c_g; μ_g, θ_g) with one reference θ_g per gene for every
  model, estimated by moments on training counts (θ = m²/(v − m), see
  :func:`moment_dispersion`), mean over cells.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.special import gammaln

from ..config import MIN_STD

#: Cells per densified chunk when scoring: bounds memory for large test sets.
CHUNK = 4096
#: Added to μ inside log μ (as torch's poisson_nll_loss does): a model predicting exactly
#: zero for an observed count pays c·log(1e8) ≈ 18 c nats instead of infinity.
MU_EPS = 1e-8
#: Reference θ range: near-Poisson genes get 1e4 instead of an infinite θ.
THETA_RANGE = (1e-2, 1e4)
#: Metric holding the width of a run's embedding: the latent dim, or a PCA baseline's rank.
EMBEDDING_DIM = "embedding_dim"
#: What :func:`embedding_metrics` scores from labels (NaN when too few cells are labelled).
LABEL_METRICS = (
    "knn_accuracy",
    "leiden_ari_test",
    "leiden_nmi_test",
    "label_silhouette_test",
    "n_leiden_clusters_test",
)
#: Classes among the labelled test cells: label metrics need two (one class: all NaN).
LABEL_CLASSES_TEST = "label_classes_test"
#: Labelled test cells below which the label metrics are not computed (a kNN graph and a
#: silhouette of fewer cells say nothing).
MIN_LABELLED_TEST = 4


def _chunks(truth: sp.spmatrix | np.ndarray, recon: np.ndarray):
    """(start, dense truth, reconstruction) for successive blocks of ``CHUNK`` cells."""
    for start in range(0, recon.shape[0], CHUNK):
        x = truth[start : start + CHUNK]
        x = np.asarray(x.toarray() if sp.issparse(x) else x, dtype=np.float64)
        yield start, x, np.asarray(recon[start : start + CHUNK], dtype=np.float64)


def rowwise_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Compute the cosine of matching rows.

    0 where either row is all zeros (as sklearn's cosine_similarity).
    """
    dot = np.einsum("ij,ij->i", a, b, dtype=np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.divide(dot, norms, out=np.zeros_like(dot), where=norms > 0)


def rowwise_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Compute the Pearson correlation of matching rows (the cosine of the centred rows)."""
    return rowwise_cosine(a - a.mean(axis=1, keepdims=True), b - b.mean(axis=1, keepdims=True))


def per_cell_metrics(
    truth: sp.spmatrix | np.ndarray,
    recon: np.ndarray,
    train_mean: np.ndarray,
    train_std: np.ndarray | None = None,
) -> pd.DataFrame:
    """One row per cell: cosine, centred_cosine, pearson, mse (truth densified in chunks).

    With ``train_std`` also ``zscored_cosine`` = cos((x̂ − m̄)/s, (x − m̄)/s), s the training
    sd per gene (at least MIN_STD): the cosine in the space of ``sc.pp.scale``, where genes
    weigh alike and the mean profile scores 0.
    """
    parts = []
    scale = None if train_std is None else np.maximum(train_std, MIN_STD)
    for _, x, x_hat in _chunks(truth, recon):
        part = {
            "cosine": rowwise_cosine(x_hat, x),
            "centred_cosine": rowwise_cosine(x_hat - train_mean, x - train_mean),
            "pearson": rowwise_pearson(x_hat, x),
            "mse": ((x_hat - x) ** 2).mean(axis=1),
        }
        if scale is not None:
            part["zscored_cosine"] = rowwise_cosine(
                (x_hat - train_mean) / scale, (x - train_mean) / scale
            )
        parts.append(pd.DataFrame(part))
    return pd.concat(parts, ignore_index=True)


@dataclass(frozen=True)
class Metric:
    """The conventions of a metric.

    This is what the tables, the answer, tuning and the figures need to know of a metric: which
    values are ``better``, the per-cell score it is the mean of over cells (``per_cell``;
    then its paired differences have intervals and the answer can rank by it), and whether
    ``summary.md``'s tables show it (``headline``).
    """

    better: Literal["higher", "lower"]
    per_cell: str | None = None
    headline: bool = False

    @property
    def maximize(self) -> bool:
        """Whether higher values of the metric are better."""
        return self.better == "higher"


#: The one registry of metric conventions; :mod:`scae.evaluation.summary`,
#: :mod:`scae.train.tune` and :mod:`scae.evaluation.plots` read it (in this order the summary's
#: tables show the headline ones).
METRICS: dict[str, Metric] = {
    "cosine_mean": Metric("higher", "cosine", headline=True),
    "centred_cosine_mean": Metric("higher", "centred_cosine", headline=True),
    "zscored_cosine_mean": Metric("higher", "zscored_cosine", headline=True),
    "pearson_mean": Metric("higher", "pearson", headline=True),
    "mse": Metric("lower", "mse", headline=True),
    "gene_pearson_median": Metric("higher", headline=True),
    "poisson_nll": Metric("lower", headline=True),
    "nb_nll": Metric("lower"),
    "mcv_mse": Metric("lower", headline=True),
    "mcv_poisson_nll": Metric("lower", headline=True),
    "knn_accuracy": Metric("higher", headline=True),
    "leiden_ari_test": Metric("higher", headline=True),
    "leiden_nmi_test": Metric("higher"),
    "label_silhouette_test": Metric("higher", headline=True),
}
#: Per-cell score → the metric that is its mean over cells (``mse`` keeps its name).
PER_CELL_SUMMARY = {m.per_cell: name for name, m in METRICS.items() if m.per_cell}
#: ``tune.criterion`` → (the training history's column, whether larger is better): a loss's
#: own validation loss, or a validation-cell metric of the registry.
TUNING_CRITERIA: dict[str, tuple[str, bool]] = {
    "own_loss": ("val_loss", False),
    "val_mse": ("val_mse", METRICS["mse"].maximize),
    "val_centred_cosine": ("val_centred_cosine", METRICS["centred_cosine_mean"].maximize),
}
#: Prefix of a metric scored on the training cells instead of the test cells.
TRAIN_PREFIX = "train_"


def training_scores(
    truth: sp.spmatrix | np.ndarray,
    reconstruct: Callable[[np.ndarray], np.ndarray],
    rows: np.ndarray,
    train_mean: np.ndarray,
    train_std: np.ndarray | None = None,
) -> dict[str, float]:
    """Compute the means over the training cells ``rows`` of :func:`per_cell_metrics`.

    They are named ``train_<metric>`` (e.g. ``train_centred_cosine_mean``): the other side of a
    run's generalization gap. ``reconstruct(rows)`` returns the run's reconstruction of those cells;
    it is called for :data:`CHUNK` cells at a time, so neither side is ever dense at once.
    """
    sums: dict[str, float] = {}
    for start in range(0, len(rows), CHUNK):
        chunk = rows[start : start + CHUNK]
        scores = per_cell_metrics(truth[chunk], reconstruct(chunk), train_mean, train_std)
        for column in scores:
            sums[column] = sums.get(column, 0.0) + float(scores[column].sum())
    return {
        TRAIN_PREFIX + PER_CELL_SUMMARY[column]: total / len(rows) for column, total in sums.items()
    }


def median_gene_pearson(truth: sp.spmatrix | np.ndarray, recon: np.ndarray) -> float:
    """Median over genes of Pearson r(x̂_·g, x_·g) across cells (constant genes skipped).

    Accumulates the five sums of the correlation chunk by chunk, so truth is never dense.
    """
    n = recon.shape[0]
    sums = np.zeros((5, recon.shape[1]))  # Σx, Σx̂, Σx², Σx̂², Σx·x̂
    for _, x, x_hat in _chunks(truth, recon):
        sums += [x.sum(0), x_hat.sum(0), (x * x).sum(0), (x_hat * x_hat).sum(0), (x * x_hat).sum(0)]
    sx, sy, sxx, syy, sxy = sums
    cov = sxy - sx * sy / n
    var_x, var_y = sxx - sx**2 / n, syy - sy**2 / n
    # Relative tolerance: a gene constant up to rounding must not count as varying.
    varies = (var_x > 1e-12 * np.maximum(sxx, 1)) & (var_y > 1e-12 * np.maximum(syy, 1))
    if not varies.any():
        return float("nan")
    return float(np.median(cov[varies] / np.sqrt(var_x[varies] * var_y[varies])))


def summarize_reconstruction(
    per_cell: pd.DataFrame, truth: sp.spmatrix | np.ndarray, recon: np.ndarray
) -> dict[str, float]:
    """Scalar metrics: cosine mean/median/quartiles, means of the others, gene Pearson."""
    cosine = per_cell["cosine"]
    return {
        "cosine_mean": float(cosine.mean()),
        "cosine_median": float(cosine.median()),
        "cosine_q25": float(cosine.quantile(0.25)),
        "cosine_q75": float(cosine.quantile(0.75)),
        "centred_cosine_mean": float(per_cell["centred_cosine"].mean()),
        "pearson_mean": float(per_cell["pearson"].mean()),
        "mse": float(per_cell["mse"].mean()),
        "gene_pearson_median": median_gene_pearson(truth, recon),
    } | (
        {"zscored_cosine_mean": float(per_cell["zscored_cosine"].mean())}
        if "zscored_cosine" in per_cell
        else {}
    )


def expected_counts(recon: np.ndarray, library_size: np.ndarray, target_sum: float) -> np.ndarray:
    """μ = (exp(x̂) − 1)⁺ · ℓ / target_sum: the counts a log-normalized x̂ stands for."""
    return np.maximum(np.expm1(recon), 0) * (library_size[:, None] / target_sum)


def moment_dispersion(counts: sp.spmatrix) -> np.ndarray:
    """Per-gene NB inverse dispersion by moments, θ = m² / (v − m), clipped to THETA_RANGE."""
    mean = np.asarray(counts.mean(axis=0), dtype=np.float64).ravel()
    mean_sq = np.asarray(counts.multiply(counts).mean(axis=0), dtype=np.float64).ravel()
    excess = mean_sq - mean**2 - mean
    theta = np.divide(mean**2, excess, out=np.full_like(mean, np.inf), where=excess > 0)
    return np.clip(theta, *THETA_RANGE)


def count_nll(counts: sp.spmatrix, mu: np.ndarray, theta: np.ndarray) -> dict[str, float]:
    """Mean over cells of the Poisson and reference-NB negative log-likelihoods of ``counts``."""
    poisson = nb = 0.0
    for start, c, m in _chunks(counts, mu):
        log_mu = np.log(m + MU_EPS)
        poisson += float((m - c * log_mu + gammaln(c + 1)).sum())
        log_theta_mu = np.log(theta + m)
        nb += float(
            -(
                gammaln(c + theta)
                - gammaln(theta)
                - gammaln(c + 1)
                + theta * (np.log(theta) - log_theta_mu)
                + c * (log_mu - log_theta_mu)
            ).sum()
        )
    return {"poisson_nll": poisson / mu.shape[0], "nb_nll": nb / mu.shape[0]}


def breakdowns(
    truth: sp.spmatrix | np.ndarray,
    recon: np.ndarray,
    per_cell: pd.DataFrame,
    gene_train_mean: np.ndarray,
    library_size: np.ndarray,
) -> dict[str, float]:
    """Compute the MSE per gene decile and the mean cosine per library-size quartile.

    MSE per decile of genes' training-mean expression (``mse_expr_decile_01`` = lowest) and
    mean cosine per quartile of cells' library size (``cosine_library_q1`` = smallest).
    """
    squared = np.zeros(recon.shape[1])
    for _, x, x_hat in _chunks(truth, recon):
        squared += ((x_hat - x) ** 2).sum(axis=0)
    gene_mse = squared / recon.shape[0]
    deciles = pd.qcut(pd.Series(gene_train_mean).rank(method="first"), 10, labels=False)
    values = {
        f"mse_expr_decile_{d + 1:02d}": float(gene_mse[deciles.to_numpy() == d].mean())
        for d in range(10)
    }
    quartiles = pd.qcut(pd.Series(library_size).rank(method="first"), 4, labels=False)
    for q in range(4):
        values[f"cosine_library_q{q + 1}"] = float(
            per_cell["cosine"].to_numpy()[quartiles.to_numpy() == q].mean()
        )
    return values


def tidy(values: dict[str, float], **keys) -> pd.DataFrame:
    """Long-format rows (``keys`` columns…, metric, value) from a metric → value mapping."""
    frame = pd.DataFrame({"metric": list(values), "value": list(values.values())})
    for column, value in reversed(keys.items()):
        frame.insert(0, column, value)
    return frame


def embedding_metrics(
    embedding: np.ndarray,
    labels: pd.Series,
    split: np.ndarray,
    seed: int = 0,
    n_neighbors: int = 15,
    silhouette_sample: int = 5000,
) -> dict[str, float]:
    """How well an embedding separates the annotated cell types, judged on test cells.

    * ``knn_accuracy``: a k-nearest-neighbour classifier (k = ``n_neighbors``) fit on training
      cells' embeddings and labels, accuracy on test cells;
    * ``leiden_ari_test`` / ``leiden_nmi_test``: adjusted Rand index / normalized mutual
      information between the labels of the test cells and Leiden clusters of the kNN graph
      of the test cells' embeddings alone (``n_leiden_clusters_test`` clusters);
    * ``label_silhouette_test``: mean silhouette width of the test cells' labels in their
      embedding, cosine distance (NaN with fewer than two labels among test cells).

    Training cells enter only as the kNN classifier's reference: the clustering and the
    silhouette never see them. Cells whose label is missing take part in none of these: all
    four use labelled cells only, and ``label_cells_test`` / ``label_cells_train`` record how
    many test cells were scored and how many training cells the classifier saw. With fewer
    than :data:`MIN_LABELLED_TEST` labelled test cells (or no labelled training cell) the
    four metrics are NaN; so are they, with a warning, when the labelled test cells hold one
    class (``label_classes_test``), and ``knn_accuracy`` when the training cells do: a
    one-class ARI of 0 or accuracy of 1 measures nothing.
    """
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
    from sklearn.neighbors import KNeighborsClassifier

    labels = pd.Series(labels)
    labelled = labels.notna().to_numpy()
    labels = labels.astype(str).to_numpy()
    train, test = (split == "train") & labelled, (split == "test") & labelled
    classes = {"test": np.unique(labels[test]), "train": np.unique(labels[train])}
    counts = {
        "label_cells_test": float(test.sum()),
        "label_cells_train": float(train.sum()),
        LABEL_CLASSES_TEST: float(len(classes["test"])),
    }
    if test.sum() < MIN_LABELLED_TEST or not train.any():
        return {name: float("nan") for name in LABEL_METRICS} | counts
    for cells, found in classes.items():
        if len(found) < 2:
            # A one-class ARI is 0, a one-class kNN accuracy 1: numbers that say nothing.
            which = "training" if cells == "train" else "test"
            warnings.warn(
                f"the labelled {which} cells hold one class ({found[0]!r}): label metrics "
                f"need two, so {'they are' if cells == 'test' else 'knn_accuracy is'} NaN "
                "(no label metrics: one class)",
                stacklevel=2,
            )
    if len(classes["test"]) < 2:
        return {name: float("nan") for name in LABEL_METRICS} | counts
    accuracy = float("nan")
    if len(classes["train"]) >= 2:
        knn = KNeighborsClassifier(n_neighbors=min(n_neighbors, int(train.sum())))
        knn.fit(embedding[train], labels[train])
        accuracy = float((knn.predict(embedding[test]) == labels[test]).mean())

    test_embedding = np.asarray(embedding[test], dtype=np.float32)
    test_labels = labels[test]
    clusters = _test_cell_clusters(test_embedding, n_neighbors, seed)
    return {
        "knn_accuracy": accuracy,
        "leiden_ari_test": float(adjusted_rand_score(test_labels, clusters)),
        "leiden_nmi_test": float(normalized_mutual_info_score(test_labels, clusters)),
        "label_silhouette_test": _label_silhouette(
            test_embedding, test_labels, silhouette_sample, seed
        ),
        "n_leiden_clusters_test": float(len(np.unique(clusters))),
    } | counts


def _test_cell_clusters(embedding: np.ndarray, n_neighbors: int, seed: int) -> np.ndarray:
    """Leiden clusters of the kNN graph of ``embedding`` (the test cells' alone)."""
    import anndata as ad
    import scanpy as sc

    graph = ad.AnnData(obsm={"X_emb": embedding})
    # Gaussian-kernel connectivities on sklearn's exact kNN: no numba JIT (≈10 s per process
    # for umap's kernel), which would dominate every evaluate job.
    sc.pp.neighbors(
        graph,
        use_rep="X_emb",
        n_neighbors=min(n_neighbors, len(embedding) - 1),
        random_state=seed,
        method="gauss",
        transformer="sklearn",
    )
    sc.tl.leiden(graph, random_state=seed, flavor="igraph", n_iterations=2)
    return graph.obs["leiden"].to_numpy()


def _label_silhouette(embedding: np.ndarray, labels: np.ndarray, sample: int, seed: int) -> float:
    """Compute the mean cosine silhouette width of ``labels`` in ``embedding``.

    At most ``sample`` cells are used; NaN unless 2 ≤ distinct labels < cells.
    """
    from sklearn.metrics import silhouette_score

    if not 2 <= len(np.unique(labels)) < len(labels):
        return float("nan")
    return float(
        silhouette_score(
            embedding,
            labels,
            metric="cosine",
            sample_size=min(sample, len(labels)),
            random_state=seed,
        )
    )
