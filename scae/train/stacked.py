"""Training several models of one loss in one process, as one stacked model.

:func:`fit_stacked` trains runs that share a loss, an architecture (but for the latent rank)
and optimisation settings — a loss's seeds and ranks — as one
:class:`~scae.module.stacked.StackedAutoencoder`: one forward and one backward per step over
every member, one optimiser step over the stacked weights, one read of the data.

Nothing of a member depends on the group it trains in. Each member is initialised as
:func:`scae.train.fit` initialises it alone (``torch.manual_seed(seed)`` before building it),
draws its minibatch order, dropout masks and negative pairs from its own (seed, epoch) streams
(members of one seed share a densified minibatch and its masks: they are the same draws), and
stops early on its own validation loss; a stopped member leaves the stack and keeps its best
weights. On the CPU a member's history and weights are bitwise those of the same run trained
alone (tests/test_stacked.py); on CUDA, whose dropout alone draws from another generator, they
agree in distribution.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ..io import atomic_path
from ..module.batch import DecoderOutput
from ..module.losses import LossSpec
from ..module.network import AutoencoderModule, ModelParams
from ..module.stacked import StackedAutoencoder
from .cells import (
    CORRUPTION,
    DROPOUT,
    NEGATIVES,
    SHUFFLE,
    CellData,
    _epoch_seed,
    _minibatches,
    _to_device,
)
from .inference import EVAL_CHUNK, VALIDATION_SCORES, FitResult, add_validation_sums
from .optim import adam, restack
from .recipes import WeightAverage, corrupt_inputs
from .trainer import (
    CHECKPOINT_INTERVAL,
    TrainingDiverged,
    TrainParams,
    _finish,
    _initial_state,
    _select,
    _stopped,
    fingerprint,
    fit,
    initial_module,
    run_key,
)

logger = logging.getLogger("scae")


def fit_stacked(
    data: CellData,
    spec: LossSpec,
    loss_params: dict,
    runs: Sequence[tuple[ModelParams, int]],
    train_params: TrainParams,
    device: torch.device,
    checkpoint: Path | None = None,
    checkpoint_interval: float = CHECKPOINT_INTERVAL,
    stack_size: int | None = None,
) -> list[FitResult]:
    """Train every (model parameters, seed) of ``runs`` as one stacked model.

    Returns one :class:`~scae.train.inference.FitResult` per run, in the order of ``runs``,
    each what :func:`scae.train.fit` returns for that run alone (bitwise on the CPU).

    The runs must share everything in ``ModelParams`` but ``latent_dim``. With ``stack_size``,
    they train in stacks of at most that many members, one stack after another (each with its
    own checkpoint beside ``checkpoint``); None or 0 stacks them all. Reduce-on-plateau
    (``lr_patience`` > 0) gives each member its own learning rate, which one optimiser step over
    stacked weights cannot: the runs then train one after the other (logged).

    With ``checkpoint``, the whole group's state is saved there atomically every
    ``checkpoint_interval`` seconds and after the last epoch, and resumed when it belongs to the
    same runs on the same cells; a resumed group is bitwise the uninterrupted one.
    """
    if stack_size and stack_size < len(runs):
        return _in_stacks(
            data, spec, loss_params, runs, train_params, device, checkpoint,
            checkpoint_interval, stack_size,
        )  # fmt: skip
    if len(runs) == 1:  # nothing to stack: fit's own loop and checkpoint
        params, seed = runs[0]
        return [
            fit(data, spec, loss_params, params, train_params, seed, device, checkpoint,
                checkpoint_interval=checkpoint_interval)
        ]  # fmt: skip
    if train_params.lr_patience:
        logger.info(
            "train.lr_patience = %d gives each run its own learning rate: %d runs train one "
            "at a time",
            train_params.lr_patience,
            len(runs),
        )
        return [
            fit(data, spec, loss_params, params, train_params, seed, device)
            for params, seed in runs
        ]
    logger.info(
        "training %d runs as one stacked model: %s",
        len(runs),
        ", ".join(f"rank {params.latent_dim} seed {seed}" for params, seed in runs),
    )
    seeds = [seed for _, seed in runs]
    stack, optimizer, group_key = _build(data, spec, loss_params, runs, train_params, device)
    states = [_initial_state(train_params) for _ in runs]
    active = list(range(len(runs)))
    average = WeightAverage(train_params.ema_decay) if train_params.ema_decay else None
    if checkpoint is not None and checkpoint.exists():
        resumed = _resume_group(checkpoint, group_key, stack, optimizer, device, average)
        if resumed is not None:
            states, active, optimizer = resumed
    rows = data.rows("train"), data.rows("val")
    saved_at = time.monotonic()
    while active:
        epoch = states[active[0]]["epoch"] + 1
        started = time.perf_counter()
        losses = _train_epoch(
            stack, optimizer, data, spec, loss_params, rows[0], train_params,
            [seeds[m] for m in active], epoch, device, average,
        )  # fmt: skip
        # the averaged weights (with averaging on) are validated and selected: swapped in once
        with _averaged(stack, average):
            scores = _validation_scores(
                stack, data, spec, loss_params, rows[1], [seeds[m] for m in active], device
            )
            seconds = (time.perf_counter() - started) / len(active)  # each member's share
            for position, member in enumerate(active):
                row = {
                    "epoch": epoch,
                    "train_loss": losses[position],
                    **scores[position],
                    "learning_rate": states[member]["lr"],
                    "seconds": seconds,
                }
                if not math.isfinite(row["train_loss"]):
                    raise TrainingDiverged(
                        f"loss {spec.name} became {row['train_loss']} in epoch {epoch} (seed "
                        f"{seeds[member]}, rank {stack.ranks[position]}); lower "
                        f"train.learning_rate (now {train_params.learning_rate}) in "
                        "config/config.yaml or check the input for extreme values"
                    )
                states[member]["history"].append(row)
                weights = functools.partial(stack.member_state, position)
                _select(states[member], epoch, row["val_loss"], weights, None, train_params)
        logger.info(
            "epoch %3d: %d runs in %.2fs, val loss %s",
            epoch,
            len(active),
            seconds * len(active),
            " ".join(f"{states[m]['history'][-1]['val_loss']:.5f}" for m in active),
        )
        active, optimizer = _drop_stopped(
            stack, optimizer, states, active, seeds, train_params, average
        )
        due = time.monotonic() - saved_at >= checkpoint_interval
        if checkpoint is not None and (due or not active):
            _save_group(checkpoint, group_key, stack, optimizer, states, active, average)
            saved_at = time.monotonic()
    return [
        _finish(AutoencoderModule(params).to(device), state, train_params)
        for (params, _), state in zip(runs, states)
    ]


def _build(
    data: CellData,
    spec: LossSpec,
    loss_params: dict,
    runs: Sequence[tuple[ModelParams, int]],
    train_params: TrainParams,
    device: torch.device,
) -> tuple[StackedAutoencoder, object, str]:
    """Return the stack of ``runs``' fresh models, its optimiser and its fingerprint.

    Each member is initialised as :func:`scae.train.fit` initialises it alone; the
    fingerprint covers every member's run (:func:`scae.train.trainer.run_key`).
    """
    stack = StackedAutoencoder(
        [initial_module(data, params, seed, device) for params, seed in runs]
    )
    optimizer = adam(
        stack.parameters,
        device,
        lr=train_params.learning_rate,
        weight_decay=train_params.weight_decay,
        stacked=stack.stacked,
    )
    keys = [
        run_key(data, spec, loss_params, params, train_params, seed, optimizer)
        for params, seed in runs
    ]
    return stack, optimizer, fingerprint({"runs": keys})


def _in_stacks(
    data: CellData,
    spec: LossSpec,
    loss_params: dict,
    runs: Sequence[tuple[ModelParams, int]],
    train_params: TrainParams,
    device: torch.device,
    checkpoint: Path | None,
    checkpoint_interval: float,
    stack_size: int,
) -> list[FitResult]:
    """:func:`fit_stacked` of ``runs`` in stacks of ``stack_size``, one after another."""
    results = []
    for part, start in enumerate(range(0, len(runs), stack_size)):
        part_checkpoint = (
            checkpoint.with_name(f"{checkpoint.stem}.part{part}{checkpoint.suffix}")
            if checkpoint is not None
            else None
        )
        results += fit_stacked(
            data, spec, loss_params, runs[start : start + stack_size], train_params, device,
            part_checkpoint, checkpoint_interval,
        )  # fmt: skip
    return results


def _averaged(stack: StackedAutoencoder, average: WeightAverage | None):
    """Within the block the stack holds its members' averaged weights (with averaging on)."""
    return average.applied(stack.tensors) if average is not None else contextlib.nullcontext()


def _drop_stopped(
    stack: StackedAutoencoder,
    optimizer,
    states: list[dict],
    active: list[int],
    seeds: list[int],
    train_params: TrainParams,
    average: WeightAverage | None,
):
    """Take the members whose training stopped out of the stack, the optimiser and the average.

    Return the members still training and the optimiser over them.
    """
    still = [p for p, m in enumerate(active) if not _stopped(states[m], train_params)]
    for position, member in enumerate(active):
        if position not in still:
            logger.info(
                "seed %d, rank %d stops after epoch %d (best %d)",
                seeds[member],
                stack.ranks[position],
                states[member]["epoch"],
                states[member]["best_epoch"],
            )
    if still and len(still) < len(active):
        if average is not None and average.tensors is not None:
            average.tensors = stack.members_of(average.tensors, still)
        optimizer = restack(optimizer, stack.keep(still), stack.parameters, stack.stacked)
    return [active[p] for p in still], optimizer


def _train_epoch(
    stack: StackedAutoencoder,
    optimizer,
    data: CellData,
    spec: LossSpec,
    loss_params: dict,
    train_rows: np.ndarray,
    train_params: TrainParams,
    seeds: list[int],
    epoch: int,
    device: torch.device,
    average: WeightAverage | None,
) -> list[float]:
    """One epoch of every member; return each member's mean training loss per cell.

    Member m's order, dropout masks, input corruption and negatives come from (``seeds[m]``,
    ``epoch``) exactly as :func:`scae.train.trainer.train_epoch` draws them: one minibatch
    order, one dropout and one corruption generator per distinct seed, one negatives generator
    per member. ``average``, when given, is updated after every step.
    """
    stack.train()
    distinct = sorted(set(seeds))
    stream = [distinct.index(s) for s in seeds]  # each member's minibatch and mask stream
    orders = [
        list(_minibatches(train_rows, train_params.batch_size, np.random.default_rng(
            _epoch_seed(seed, epoch, SHUFFLE))))
        for seed in distinct
    ]  # fmt: skip
    dropout_generators = [
        torch.Generator().manual_seed(_epoch_seed(seed, epoch, DROPOUT)) for seed in distinct
    ]
    corruption = [
        torch.Generator().manual_seed(_epoch_seed(seed, epoch, CORRUPTION)) for seed in distinct
    ]
    negatives = [
        torch.Generator().manual_seed(_epoch_seed(seed, epoch, NEGATIVES)) for seed in seeds
    ]
    p = stack.params.dropout
    widths = stack.dropout_widths()
    loss_sums = torch.zeros(len(seeds), dtype=torch.float64, device=device)
    n_seen = 0
    for step in range(len(orders[0])):
        batches = [data.batch(order[step], spec.uses_counts) for order in orders]
        if train_params.corrupts_inputs:  # each seed's input, as alone; targets stay whole
            batches = [
                (corrupt_inputs(inputs, data, order[step], train_params.count_thinning,
                                train_params.input_masking, generator), batch, library)
                for (inputs, batch, library), order, generator
                in zip(batches, orders, corruption)
            ]  # fmt: skip
        targets = [_to_device(batch, device) for _, batch, _ in batches]  # once per seed
        n = len(orders[0][step])
        # nn.Dropout's masks on the CPU: per layer, each seed's draw from its own generator
        masks = [
            [
                torch.empty(n, w).bernoulli_(1 - p, generator=g).div_(1 - p)
                for g in dropout_generators
            ]
            for w in widths
        ]
        if len(distinct) == 1:  # one minibatch for every member: no copy per member
            inputs, library = batches[0][0], batches[0][2]
            masks = [layer[0].expand(len(seeds), n, -1) for layer in masks]
        else:
            inputs = torch.stack([batches[s][0] for s in stream])
            library = torch.stack([batches[s][2] for s in stream])
            masks = [torch.stack([layer[s] for s in stream]) for layer in masks]
        masks = [mask.to(device) for mask in masks]
        out = stack(inputs.to(device), library.to(device), masks)
        member_losses = []
        for m, seed_index in enumerate(stream):
            batch = replace(targets[seed_index], generator=negatives[m])
            member_losses.append(spec.fn(_member(out, m), batch, loss_params).mean())
        losses = torch.stack(member_losses)
        optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()
        optimizer.step()
        stack.count_step()
        if average is not None:
            average.update(stack.tensors)
        loss_sums += losses.detach().double() * n
        n_seen += n
    return (loss_sums / n_seen).tolist()


def _validation_scores(
    stack: StackedAutoencoder,
    data: CellData,
    spec: LossSpec,
    loss_params: dict,
    rows: np.ndarray,
    seeds: list[int],
    device: torch.device,
) -> list[dict[str, float]]:
    """:func:`scae.train.inference.evaluate_split` of every member: one forward per chunk."""
    stack.eval()
    generators = [torch.Generator().manual_seed(_epoch_seed(s, 0, NEGATIVES)) for s in seeds]
    sums = [dict.fromkeys(VALIDATION_SCORES, 0.0) for _ in seeds]
    with torch.no_grad():
        for start in range(0, len(rows), EVAL_CHUNK):
            idx = rows[start : start + EVAL_CHUNK]
            inputs, batch, library = data.batch(idx, spec.uses_counts)
            batch = _to_device(batch, device)
            out = stack(inputs.to(device), library.to(device))
            for m, generator in enumerate(generators):
                add_validation_sums(
                    sums[m], _member(out, m), replace(batch, generator=generator), idx, data,
                    spec, loss_params,
                )  # fmt: skip
    return [{name: total / len(rows) for name, total in s.items()} for s in sums]


def _member(out: DecoderOutput, m: int) -> DecoderOutput:
    """Member ``m``'s decoder output: each field without its member axis."""
    theta = out.theta
    return DecoderOutput(
        expression=out.expression[m] if out.expression is not None else None,
        mu=out.mu[m] if out.mu is not None else None,
        theta=theta[m] if theta is not None else None,
        dropout_logits=out.dropout_logits[m] if out.dropout_logits is not None else None,
    )


def _save_group(
    checkpoint: Path,
    key: str,
    stack: StackedAutoencoder,
    optimizer,
    states: list[dict],
    active: list[int],
    average: WeightAverage | None,
) -> None:
    """Write the group's state atomically: a killed job leaves the previous one."""
    with atomic_path(checkpoint) as tmp:
        torch.save(
            {
                "fingerprint": key,
                "tensors": {name: [t.detach() for t in ts] for name, ts in stack.tensors.items()},
                "batches_tracked": stack.batches_tracked,
                "optimizer": optimizer.state_dict(),
                "states": states,
                "active": active,
                "average": average.tensors if average is not None else None,
            },
            tmp,
        )


def _resume_group(
    checkpoint: Path,
    key: str,
    stack: StackedAutoencoder,
    optimizer,
    device: torch.device,
    average: WeightAverage | None,
):
    """Load a group checkpoint of the same runs into ``stack``, ``average`` and an optimiser.

    Return (states, active members, optimiser), or None when the file is another group's.
    """
    saved = torch.load(checkpoint, map_location=device, weights_only=True)
    if saved["fingerprint"] != key:
        logger.info("ignoring checkpoint %s written for other runs or cells", checkpoint)
        return None
    active = saved["active"]
    if active:
        optimizer = restack(optimizer, stack.keep(active), stack.parameters, stack.stacked)
        with torch.no_grad():
            for name, tensors in saved["tensors"].items():
                for mine, value in zip(stack.tensors[name], tensors):
                    mine.copy_(value)
        optimizer.load_state_dict(saved["optimizer"])
    stack.batches_tracked = saved["batches_tracked"]
    if average is not None:
        average.tensors = saved.get("average")
    logger.info(
        "resumed %d running of %d runs from %s", len(active), len(saved["states"]), checkpoint
    )
    return saved["states"], active, optimizer
