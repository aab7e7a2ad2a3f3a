import importlib


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
        # The result (cells × HVGs) and the blocks in flight, not the whole input; scae.data
        # (anndata) is imported only once a preprocess job is scheduled, not at parse time.
        mem_mb=lambda wildcards, input, attempt: attempt
        * importlib.import_module("scae.data").preprocess_mem_mb(
            input[0],
            dataset_config(wildcards)["counts"],
            preprocess_config(wildcards)["n_top_genes"],
            is_mcv(wildcards),
        ),
        runtime=lambda wildcards, attempt: 30 * attempt,
    params:
        dataset=dataset_config,
        preprocess=preprocess_config,
        mcv=lambda wildcards: MCV if is_mcv(wildcards) else None,
        clusters=CLUSTERS,
        needs=NEEDS,
        # Count losses and molecule splitting both need integer counts.
        require_integers=lambda wildcards: is_mcv(wildcards)
        or any(loss in COUNT_LOSSES for loss in LOSS_NAMES),
    script:
        "../scripts/preprocess.py"
