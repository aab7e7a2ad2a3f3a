# Baselines' embeddings and test reconstructions, in the same files as an autoencoder's
# (whose own are written by its train job, rules/train.smk): PCA under each rank's scope
# k{rank}, the baselines without a rank under shared/.
rule baseline:
    input:
        "results/{dataset}/preprocessed.h5ad",
    output:
        embedding="results/{dataset}/{scope}/embeddings/baseline/{baseline}.h5ad",
        reconstruction="results/{dataset}/{scope}/reconstructions/baseline/{baseline}.h5ad",
    log:
        "logs/{dataset}/{scope}/baseline/{baseline}.log",
    benchmark:
        "benchmarks/{dataset}/{scope}/baseline/{baseline}.tsv"
    conda:
        "../envs/scanpy.yaml"
    threads: 1
    resources:
        mem_mb=mem_mb_from_input(1500, 8),
        runtime=minutes_per_attempt(20),
    params:
        n_components=scope_rank,
        seed=split_seed,
        max_pca_rank=config["mcv"]["max_pca_rank"],
        input_scaling=config["model"]["input_scaling"],
    script:
        "../scripts/baseline.py"
