# One job per baseline run, and one per dataset × rank × seed for all the losses together:
# an evaluate job spends most of its time starting (imports) and reading the dataset, so
# scoring the losses of a seed in one process saves that for all but one of them.
rule evaluate:
    input:
        data="results/{dataset}/preprocessed.h5ad",
        # lists of one, as evaluate_losses' (the script scores each run of its lists)
        embeddings=["results/{dataset}/{scope}/embeddings/baseline/{baseline}.h5ad"],
        reconstructions=[
            "results/{dataset}/{scope}/reconstructions/baseline/{baseline}.h5ad"
        ],
    output:
        metrics=["results/{dataset}/{scope}/metrics/baseline/{baseline}.tsv"],
        per_cell=[
            "results/{dataset}/{scope}/metrics/baseline/{baseline}.per_cell.tsv.gz"
        ],
    log:
        "logs/{dataset}/{scope}/evaluate/baseline/{baseline}.log",
    benchmark:
        "benchmarks/{dataset}/{scope}/evaluate/baseline/{baseline}.tsv"
    conda:
        "../envs/scanpy.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb_from_input(1500, 4),
        runtime=minutes_per_attempt(20),
    params:
        label_key=label_key,
        rank=scope_rank,
        seed=None,
    script:
        "../scripts/evaluate.py"


rule evaluate_losses:
    input:
        data="results/{dataset}/preprocessed.h5ad",
        embeddings=every_loss(
            "results/{dataset}/k{rank}/embeddings/{loss}/seed{seed}.h5ad"
        ),
        reconstructions=every_loss(
            "results/{dataset}/k{rank}/reconstructions/{loss}/seed{seed}.h5ad"
        ),
    output:
        metrics=every_loss("results/{dataset}/k{rank}/metrics/{loss}/seed{seed}.tsv"),
        per_cell=every_loss(
            "results/{dataset}/k{rank}/metrics/{loss}/seed{seed}.per_cell.tsv.gz"
        ),
    log:
        "logs/{dataset}/k{rank}/evaluate/seed{seed}.log",
    benchmark:
        "benchmarks/{dataset}/k{rank}/evaluate/seed{seed}.tsv"
    conda:
        "../envs/scanpy.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb_from_input(1500, 4),
        runtime=minutes_per_attempt(10 * len(LOSS_NAMES)),
    params:
        label_key=label_key,
        rank=wildcard_number("rank"),
        seed=wildcard_number("seed"),
    script:
        "../scripts/evaluate.py"


rule summarize:
    input:
        data="results/{dataset}/preprocessed.h5ad",
        metrics=metric_files,
        per_cell=per_cell_files,
        histories=history_files,
        trials=tuning_outcomes("trials.tsv"),
        choices=tuning_outcomes("best.yaml"),
    output:
        tidy="results/{dataset}/metrics.tsv",
        summary=in_report("summary.tsv", "Tables"),
        comparisons=in_report("comparisons.tsv", "Tables"),
        ranks=in_report("ranks.tsv", "Tables"),
        markdown="results/{dataset}/summary.md",
    log:
        "logs/{dataset}/summarize.log",
    benchmark:
        "benchmarks/{dataset}/summarize.tsv"
    wildcard_constraints:
        dataset=alternatives(DATASETS),
    conda:
        "../envs/scanpy.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        summary=config["summary"],
        preprocess=preprocess_config,
        dataset=dataset_config,
        max_epochs=config["train"]["max_epochs"],
        patience=config["train"]["patience"],
        reference_rank=REFERENCE_RANK,
    script:
        "../scripts/summarize.py"
