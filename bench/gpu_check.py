"""The GPU path checked against the CPU, and NB training speed on the GPU against scvi-tools.

    python bench/gpu_check.py                      # on a CUDA machine: cuda vs cpu, ~5 min
    python bench/gpu_check.py --device cpu --cells 5000 --epochs 2   # dry run, no GPU needed

1. Agreement. Every loss, both dispersion settings of ``nb``/``zinb``, every
   ``negative_sampling`` of ``cosine_embedding`` (12 runs), each trained for ``--epochs``
   epochs from the same seed through ``scae.Autoencoder`` on ``--device`` and on
   ``--reference-device`` (default cpu), on the bundled pbmc3k (the workflow's
   preprocessing, with training-cell clusters and labels for the negatives). Per epoch the
   history's ``train_loss`` and ``val_loss`` must agree to a relative ``--rtol`` (default
   1e-2) and ``val_cosine`` / ``val_centred_cosine`` to an absolute ``--atol`` (default
   5e-3). These runs train without dropout: ``nn.Dropout`` draws its masks from torch's CPU
   generator on one device and from the CUDA generator on the other, so with dropout the two
   runs would differ by their masks rather than by their arithmetic. Both
   devices draw the same initial weights (built on the CPU), minibatch order and negative
   pairs (NumPy and CPU torch generators); what differs is float summation order in the
   GPU's kernels (and its atomic ``index_add``), which training amplifies step by step —
   hence a tolerance rather than equality (CPU against CPU agrees bitwise, and the dry run
   checks that). Each configuration then trains once more on ``--device`` with the default
   dropout: its losses must be finite (the CUDA dropout path runs), and its final
   validation loss is reported beside the CPU's without dropout, for information.
2. Throughput. NB training cells/s (θ per gene) of scae and of scvi-tools ``SCVI`` on the
   same device at the matched architecture of ``bench/run.py``'s throughput section (2
   hidden layers of 128, latent 32, dropout 0.1, batch norm, batch 256, Adam) on
   ``--cells`` synthetic cells × 2000 genes, alternating, ``--rounds`` × ``--epochs``
   epochs, the first epoch of each run left out, medians; scae's training loop alone (its
   validation pass replaced by a no-op, as SCVI trains without one) and whole epochs.
   Without scvi-tools installed only scae is timed.

Exit status: 0 all runs agree, 1 some disagree, 77 ``--device cuda`` without CUDA (skipped:
nothing was checked). Results also go to ``bench/results/gpu_check.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from sections.common import (  # noqa: E402
    RESULTS,
    epoch_rates,
    fit_epoch_seconds,
    preprocessed_synthetic,
)
from sections.throughput import scvi_cells_per_second  # noqa: E402

#: Exit status of a run that checked nothing (automake's "skipped").
SKIPPED = 77
#: History columns compared relatively (losses) and absolutely (cosines, in [−1, 1]).
RELATIVE = ("train_loss", "val_loss")
ABSOLUTE = ("val_cosine", "val_centred_cosine")


def configurations() -> list[tuple[str, dict]]:
    """(loss, loss_params) of every run: each loss, each of its categorical choices."""
    from scae.module.losses import LOSSES

    return [(name, params) for name, spec in LOSSES.items() for params in spec.variants()]


def pbmc3k():
    """The bundled pbmc3k as the workflow preprocesses it, with training-cell clusters."""
    import anndata as ad

    from scae import Autoencoder
    from scae.data.preprocess import preprocess

    raw = ad.read_h5ad(HERE.parent / "resources" / "data" / "pbmc3k.h5ad")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adata = preprocess(raw, dataset="pbmc3k", label_key="cell_type", clusters=True)
    Autoencoder.setup_anndata(adata, layer="counts", labels_key="cell_type")
    return adata


def history(
    adata, loss: str, loss_params: dict, device: str, epochs: int, seed: int, **model_kwargs
):
    """The per-epoch history of one training run (no early stop within ``epochs``)."""
    from scae import Autoencoder

    model = Autoencoder(adata, loss, loss_params, **model_kwargs)
    model.train(max_epochs=epochs, patience=epochs + 1, seed=seed, device=device)
    return model.history


def deviations(a, b) -> dict[str, float]:
    """Largest per-epoch deviation of each compared column: relative for losses, absolute
    for cosines."""
    out = {}
    for column in RELATIVE:
        out[column] = max(abs(x - y) / max(abs(y), 1e-12) for x, y in zip(a[column], b[column]))
    for column in ABSOLUTE:
        out[column] = max(abs(x - y) for x, y in zip(a[column], b[column]))
    return out


def check_agreement(args) -> tuple[list[dict], bool]:
    adata = pbmc3k()
    rows, all_agree = [], True
    print(
        f"agreement: {args.device} vs {args.reference_device}, {args.epochs} epochs, "
        f"pbmc3k {adata.n_obs} cells × {adata.n_vars} genes; rtol {args.rtol:g} "
        f"({', '.join(RELATIVE)}), atol {args.atol:g} ({', '.join(ABSOLUTE)})",
        flush=True,
    )
    for loss, params in configurations():
        label = loss + "".join(f" {k}={v}" for k, v in params.items())
        runs, seconds = {}, {}
        for device in (args.device, args.reference_device):
            started = time.perf_counter()
            runs[device] = history(adata, loss, params, device, args.epochs, args.seed, dropout=0.0)
            seconds[device] = time.perf_counter() - started
        a, b = runs[args.device], runs[args.reference_device]
        with_dropout = history(adata, loss, params, args.device, args.epochs, args.seed)
        finite = all(
            math.isfinite(v) for h in (a, with_dropout) for c in RELATIVE + ABSOLUTE for v in h[c]
        )
        dev = deviations(a, b)
        agree = (
            finite
            and all(dev[c] <= args.rtol for c in RELATIVE)
            and all(dev[c] <= args.atol for c in ABSOLUTE)
        )
        all_agree &= agree
        rows.append(
            {
                "run": label,
                "agree": agree,
                "finite": finite,
                **dev,
                "final_val_loss": {
                    args.device: float(a["val_loss"].iloc[-1]),
                    args.reference_device: float(b["val_loss"].iloc[-1]),
                    f"{args.device}_default_dropout": float(with_dropout["val_loss"].iloc[-1]),
                },
                "seconds": seconds,
            }
        )
        print(
            f"  {label:<42} {'ok ' if agree else 'NO '} "
            + "  ".join(f"{c} {dev[c]:.1e}" for c in RELATIVE + ABSOLUTE)
            + f"  val_loss with default dropout {with_dropout['val_loss'].iloc[-1]:.4g} vs "
            f"{b['val_loss'].iloc[-1]:.4g} without"
            + f"  ({seconds[args.device]:.1f} s / {seconds[args.reference_device]:.1f} s)",
            flush=True,
        )
    return rows, all_agree


def check_throughput(args) -> dict:
    import torch

    from scae.train.cells import CellData

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="scae-gpu-check-"))
    workdir.mkdir(parents=True, exist_ok=True)
    raw, pre = preprocessed_synthetic(args.cells, workdir)
    raw = raw[:, pre.var_names].copy()
    data = CellData(pre, "none")
    n_train = len(data.rows("train"))
    try:
        import scvi  # noqa: F401

        have_scvi = True
    except ImportError:
        have_scvi = False
        print("  scvi-tools is not installed (pip install -e '.[bench]'): timing scae only")
    accelerator = "gpu" if torch.device(args.device).type == "cuda" else "cpu"
    ours, loop, theirs = [], [], []
    for r in range(args.rounds):  # alternating, so both see the same machine
        ours += epoch_rates(
            n_train,
            fit_epoch_seconds(data, "nb", (128, 128), 256, args.epochs, seed=r, device=args.device),
        )
        loop += epoch_rates(
            n_train,
            fit_epoch_seconds(
                data,
                "nb",
                (128, 128),
                256,
                args.epochs,
                seed=r,
                validation=False,
                device=args.device,
            ),
        )
        if have_scvi:
            n_scvi, seconds = scvi_cells_per_second(
                raw, 256, args.epochs, seed=r, accelerator=accelerator
            )
            theirs += epoch_rates(n_scvi, seconds)
    result = {
        "data": f"{pre.n_obs} cells × {pre.n_vars} genes",
        "device": args.device,
        "scae_cells_per_s": statistics.median(ours),
        "scae_loop_cells_per_s": statistics.median(loop),
    }
    print(
        f"throughput on {args.device}, NB, {result['data']}: scae "
        f"{result['scae_cells_per_s']:,.0f} cells/s per epoch incl. validation, "
        f"{result['scae_loop_cells_per_s']:,.0f} training loop only",
        flush=True,
    )
    if theirs:
        result["scvi_cells_per_s"] = statistics.median(theirs)
        result["ratio_loop"] = result["scae_loop_cells_per_s"] / result["scvi_cells_per_s"]
        print(
            f"  scvi-tools SCVI on {accelerator}: {result['scvi_cells_per_s']:,.0f} cells/s; "
            f"scae / scvi-tools, training loop against training loop: "
            f"{result['ratio_loop']:.2f}×",
            flush=True,
        )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="the device checked (default cuda)")
    parser.add_argument("--reference-device", default="cpu")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rtol", type=float, default=1e-2)
    parser.add_argument("--atol", type=float, default=5e-3)
    parser.add_argument(
        "--cells",
        type=int,
        default=50_000,
        help="synthetic cells of the throughput check (default 50k)",
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="where the synthetic data go (default: a temporary folder)",
    )
    args = parser.parse_args(argv)

    import torch

    logging.getLogger("scae").setLevel(logging.ERROR)  # a few epochs never "converge"
    for device in (args.device, args.reference_device):
        if torch.device(device).type == "cuda" and not torch.cuda.is_available():
            print(
                f"skipped: --device {device} but torch {torch.__version__} sees no CUDA "
                "device; run on a GPU machine, or pass --device cpu for a dry run",
                file=sys.stderr,
            )
            return SKIPPED
    if torch.cuda.is_available():
        print(f"CUDA: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    started = time.perf_counter()
    rows, agree = check_agreement(args)
    report = {
        "device": args.device,
        "reference_device": args.reference_device,
        "epochs": args.epochs,
        "rtol": args.rtol,
        "atol": args.atol,
        "runs": rows,
    }
    if not args.skip_throughput:
        report["throughput"] = check_throughput(args)
    report["seconds"] = time.perf_counter() - started
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "gpu_check.json").write_text(json.dumps(report, indent=1))
    failed = [row["run"] for row in rows if not row["agree"]]
    print(
        f"{len(rows) - len(failed)} of {len(rows)} runs agree"
        + (f"; disagreeing: {', '.join(failed)}" if failed else "")
        + f"; {report['seconds']:.0f} s; {RESULTS / 'gpu_check.json'}"
    )
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
