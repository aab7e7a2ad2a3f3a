# One job per dataset × rank × loss × seed. The job also writes the run's embedding (every cell) and
# test-cell reconstructions from the best weights it holds in memory: a separate embed job
# per run would pay another process start and data read (a third of its time).
rule train:
    input:
        data="results/{dataset}/preprocessed.h5ad",
        tuned=tuned_settings,
        tuned_run=tuned_run,
    output:
        model="results/{dataset}/k{rank}/models/{loss}/seed{seed}/model.pt",
        history="results/{dataset}/k{rank}/models/{loss}/seed{seed}/history.tsv",
        embedding="results/{dataset}/k{rank}/embeddings/{loss}/seed{seed}.h5ad",
        reconstruction="results/{dataset}/k{rank}/reconstructions/{loss}/seed{seed}.h5ad",
    log:
        "logs/{dataset}/k{rank}/train/{loss}/seed{seed}.log",
    benchmark:
        "benchmarks/{dataset}/k{rank}/train/{loss}/seed{seed}.tsv"
    conda:
        "../envs/torch.yaml"
    threads: config["train"]["threads"]
    resources:
        mem_mb=mem_mb_from_input(1500, 8),
        runtime=minutes_per_attempt(60),
    params:
        loss_params=loss_params,
        model=model_at_rank,
        train=config["train"],
        label_key=label_key,
        # Outside the outputs, so a killed job's checkpoint survives for the rerun.
        checkpoint="results/{dataset}/k{rank}/checkpoints/{loss}/seed{seed}.pt",
    script:
        "../scripts/train.py"


# With several ranks (train.models_per_job: ranks), one job per dataset × loss × seed trains
# every rank as one stacked model: one process start and data read instead of one per rank,
# and the ranks of a seed share each densified minibatch. The .mcv variants train at the
# reference rank only, so rule train serves them.
if STACK_RANKS:

    ruleorder: train_ranks > train

    rule train_ranks:
        input:
            data="results/{dataset}/preprocessed.h5ad",
            tuned=tuned_settings,
            tuned_run=tuned_run,
        output:
            model=at_every_rank("models/{loss}/seed{seed}/model.pt"),
            history=at_every_rank("models/{loss}/seed{seed}/history.tsv"),
            embedding=at_every_rank("embeddings/{loss}/seed{seed}.h5ad"),
            reconstruction=at_every_rank("reconstructions/{loss}/seed{seed}.h5ad"),
        log:
            "logs/{dataset}/train/{loss}/seed{seed}.log",
        benchmark:
            "benchmarks/{dataset}/train/{loss}/seed{seed}.tsv"
        wildcard_constraints:
            dataset=alternatives(DATASETS),
        conda:
            "../envs/torch.yaml"
        threads: config["train"]["threads"]
        resources:
            mem_mb=mem_mb_from_input(1500 + 250 * (len(RANKS) - 1), 8),
            runtime=minutes_per_attempt(60 * len(RANKS)),
        params:
            loss_params=loss_params,
            model=model_at_rank,
            train=config["train"],
            label_key=label_key,
            ranks=RANKS,
            reference_rank=REFERENCE_RANK,
            checkpoint="results/{dataset}/checkpoints/{loss}/seed{seed}.pt",
        script:
            "../scripts/train_ranks.py"
