rule preprocess:
    input:
        lambda wildcards: dataset_config(wildcards)["path"],
    output:
        "results/{dataset}/preprocessed.h5ad",
    log:
        "logs/{dataset}/preprocess.log",
    benchmark:
        "benchmarks/{dataset}/preprocess.tsv"
    conda:
        "../envs/scanpy.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb_from_input(2000, 20),
        runtime=lambda wildcards, attempt: 30 * attempt,
    params:
        dataset=dataset_config,
        preprocess=config["preprocess"],
        mcv=lambda wildcards: MCV if is_mcv(wildcards) else None,
        clusters="cosine_embedding" in LOSS_NAMES
        and config["loss_params"]["cosine_embedding"]["negative_sampling"] == "cluster",
        # Count losses and molecule splitting both need integer counts.
        require_integers=lambda wildcards: is_mcv(wildcards)
        or any(loss in COUNT_LOSSES for loss in LOSS_NAMES),
    script:
        "../scripts/preprocess.py"
