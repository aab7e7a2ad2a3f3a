rule evaluate:
    input:
        data="results/{dataset}/preprocessed.h5ad",
        embedding="results/{dataset}/embeddings/{model}/{run}.h5ad",
        reconstruction="results/{dataset}/reconstructions/{model}/{run}.h5ad",
    output:
        metrics="results/{dataset}/metrics/{model}/{run}.tsv",
        per_cell="results/{dataset}/metrics/{model}/{run}.per_cell.tsv.gz",
    log:
        "logs/{dataset}/evaluate/{model}/{run}.log",
    benchmark:
        "benchmarks/{dataset}/evaluate/{model}/{run}.tsv"
    wildcard_constraints:
        model="|".join([*LOSS_NAMES, "baseline"]),
        run=rf"seed\d+|{alternatives(MCV_BASELINES)}",
    conda:
        "../envs/scanpy.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb_from_input(1500, 4),
        runtime=lambda wildcards, attempt: 20 * attempt,
    params:
        label_key=lambda wildcards: dataset_config(wildcards)["label_key"],
    script:
        "../scripts/evaluate.py"


rule summarize:
    input:
        metrics=metric_files,
        per_cell=per_cell_files,
        # every autoencoder run's training history, of the dataset and its MCV variant
        histories=lambda wildcards: [
            f"results/{variant}/models/{loss}/{run}/history.tsv"
            for variant in [wildcards.dataset, wildcards.dataset + MCV_SUFFIX]
            if variant in DATASETS + MCV_DATASETS
            for loss, run in run_ids(variant)
            if loss in LOSS_NAMES
        ],
    output:
        tidy="results/{dataset}/metrics.tsv",
        summary=report(
            "results/{dataset}/summary.tsv",
            caption="../report/summary_table.rst",
            category="{dataset}",
            subcategory="Tables",
        ),
        comparisons=report(
            "results/{dataset}/comparisons.tsv",
            caption="../report/comparisons_table.rst",
            category="{dataset}",
            subcategory="Tables",
        ),
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
        max_epochs=config["train"]["max_epochs"],
        patience=config["train"]["patience"],
    script:
        "../scripts/summarize.py"
